"""The web UI in a real headless Chromium, through the panel and a real gateway and engine.

Set ``PANEL_SCREENSHOTS=docs/images`` to save the screenshots the docs show.
"""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Browser, expect

from tests.conftest import StackFactory
from tests.statuspanel.browser import PHONE, browser, log_in, logged_in_page, running_stack, shot
from tests.statuspanel.conftest import Gateway, Panel

__all__ = ["browser"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.browser]


async def test_a_person_manages_a_stack_from_the_browser(
    stacks: StackFactory, gateway: Gateway, panel: Panel, browser: Browser
) -> None:
    name = running_stack(stacks, panel)
    page, violations = await logged_in_page(browser, panel)

    card = page.get_by_test_id(f"stack-{name}")
    await expect(card).to_be_visible()
    # Other projects on the engine are listed too; the filter narrows the page to ours.
    await page.get_by_test_id("stack-filter").fill(name)
    await expect(page.locator("[data-stack]:visible")).to_have_count(1)
    worker_state = page.get_by_test_id(f"state-{name}-worker")
    await expect(worker_state).to_have_text("running")
    await expect(page.get_by_test_id(f"health-{name}-web")).to_have_text(re.compile("healthy|starting"))
    await expect(page.get_by_test_id("agent-status")).to_have_text("up")

    # Stop one service, watch its state change, then restart it.
    await page.get_by_test_id(f"action-{name}-worker-stop").click()
    await expect(page.get_by_test_id("action-result").last).to_have_attribute("data-outcome", "ok", timeout=60_000)
    await expect(worker_state).to_have_text(re.compile(r"^exited"), timeout=15_000)
    await page.get_by_test_id(f"action-{name}-worker-restart").click()
    await expect(worker_state).to_have_text("running", timeout=60_000)
    await expect(page.get_by_test_id("action-result").last).to_contain_text(f"restart {name}/worker")
    await expect(page.get_by_test_id("metric-compose-agent")).not_to_have_text("0")
    await expect(page.get_by_test_id(f"health-{name}-web")).to_have_text("healthy", timeout=20_000)
    await shot(page, "dashboard")

    # The log viewer: tail, then grep.
    await page.get_by_test_id(f"logs-link-{name}").click()
    output = page.get_by_test_id("log-output")
    await expect(output).to_contain_text("worker | tick")
    # Odd ticks: present after the first second of output, so the check does not race the worker.
    await page.get_by_test_id("log-grep").fill("tick [0-9]*[13579]$")
    await page.get_by_test_id("log-refresh").click()
    await expect(output.locator("mark").first).to_be_visible(timeout=15_000)
    lines = [line for line in (await output.inner_text()).splitlines() if line.strip()]
    assert lines and all(re.search(r"tick [0-9]*[13579]$", line) for line in lines), lines
    await page.get_by_test_id("log-grep").fill("")
    await page.get_by_test_id("log-follow").check()
    await page.get_by_test_id("log-refresh").click()
    await expect(page.get_by_test_id("log-status")).to_contain_text("following")
    await shot(page, "logs")

    # Down asks first: cancelling changes nothing; confirming brings the stack down.
    await page.goto(f"{panel.base}/?q={name}")
    await expect(page.get_by_test_id(f"stack-{name}")).to_be_visible()
    await page.get_by_test_id(f"action-{name}-down").click()
    dialog = page.get_by_test_id("confirm-down")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text(name)
    await page.get_by_test_id("confirm-cancel").click()
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_test_id("action-result")).to_have_count(0)
    await expect(worker_state).to_have_text("running")
    await page.get_by_test_id(f"action-{name}-down").click()
    await page.get_by_test_id("confirm-ok").click()
    await expect(page.get_by_test_id("action-result").last).to_contain_text(f"down {name}", timeout=60_000)
    await expect(worker_state).to_have_text("missing", timeout=15_000)
    # Everything above ran under the panel's CSP, with no inline script or style to block.
    assert violations == []
    await page.context.close()


async def test_the_dashboard_works_at_phone_width_and_shows_a_banner_when_the_gateway_dies(
    stacks: StackFactory, gateway: Gateway, panel: Panel, browser: Browser
) -> None:
    name = running_stack(stacks, panel)
    context = await browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = await context.new_page()
    await log_in(page, panel)
    await page.get_by_test_id("stack-filter").fill(name)
    restart = page.get_by_test_id(f"action-{name}-web-restart")
    await expect(restart).to_be_visible()
    box = await restart.bounding_box()
    assert box is not None and box["x"] + box["width"] <= PHONE["width"], "buttons must fit the phone's width"
    await expect(page.get_by_test_id(f"health-{name}-web")).to_have_text("healthy", timeout=20_000)
    await shot(page, "dashboard-phone", full_page=True)

    gateway.kill()
    banner = page.get_by_test_id("gateway-banner")
    await expect(banner).to_be_visible(timeout=15_000)
    await expect(page.get_by_test_id("agent-status")).to_have_text("down")
    await shot(page, "gateway-down-phone")
    gateway.start()
    gateway.wait_healthy()
    await expect(banner).to_be_hidden(timeout=20_000)
    await expect(page.get_by_test_id(f"state-{name}-web")).to_have_text("running")
    await context.close()
