"""A long action in a real headless Chromium: the page follows the gateway task and shows its progress."""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, expect

from tests.conftest import StackFactory
from tests.statuspanel.browser import browser, logged_in_page
from tests.statuspanel.conftest import Gateway, Panel
from tests.statuspanel.test_panel_tasks import stubborn, up

__all__ = ["browser"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.browser]


async def test_the_dashboard_shows_a_long_action_s_progress_then_its_outcome(
    stacks: StackFactory, gateway: Gateway, panel: Panel, browser: Browser
) -> None:
    name = stacks.make(stubborn("6s"))
    await up(panel, name)
    page, violations = await logged_in_page(browser, panel, wrong_first=False)
    await page.get_by_test_id("stack-filter").fill(name)
    await page.get_by_test_id(f"action-{name}-down").click()
    await page.get_by_test_id("confirm-ok").click()

    # While Compose waits out the grace period, the pending note shows the task's last event.
    progress = page.get_by_test_id("action-progress")
    await expect(progress).to_contain_text("Stopping", timeout=30_000)
    await expect(page.get_by_test_id("action-stop")).to_be_visible()
    outcome = page.locator("[data-testid=action-result][data-outcome=ok]")
    await expect(outcome).to_contain_text(f"down {name}", timeout=60_000)
    await expect(progress).to_have_count(0)
    await expect(page.get_by_test_id(f"state-{name}-stubborn")).to_have_text("missing", timeout=15_000)
    assert violations == []
    await page.context.close()
