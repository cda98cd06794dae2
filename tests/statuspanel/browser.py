"""What the browser tests share: a headless Chromium, logging in, screenshots, and watching the CSP.

Set ``PANEL_SCREENSHOTS=docs/images`` to save the screenshots the docs show. Import the fixture into a
test module: ``from tests.statuspanel.browser import browser`` (it is :mod:`tests.chromium`'s).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx2
from playwright.async_api import Browser, Page, ViewportSize, expect

from tests.chromium import browser
from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory
from tests.statuspanel.conftest import Panel

__all__ = ["browser", "shot", "watch_for_violations", "log_in", "logged_in_page", "running_stack", "DESKTOP", "PHONE"]

DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
SHOTS = os.environ.get("PANEL_SCREENSHOTS")


async def shot(page: Page, name: str, *, full_page: bool = False) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=full_page)


def watch_for_violations(page: Page) -> list[str]:
    """Collect what the page's Content-Security-Policy blocked, and any uncaught script error."""
    problems: list[str] = []
    page.on(
        "console",
        lambda message: problems.append(message.text) if "Content Security Policy" in message.text else None,
    )
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    return problems


async def log_in(page: Page, panel: Panel, *, wrong_first: bool = True) -> None:
    """Log in with the panel's token through the form (after a wrong one, unless told not to)."""
    await page.goto(panel.base + "/")
    await expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    await expect(page.get_by_test_id("login-card")).to_be_visible()
    if wrong_first:
        await shot(page, "login")
        await page.get_by_test_id("login-token").fill("wrong")
        await page.get_by_test_id("login-submit").click()
        await expect(page.get_by_test_id("login-error")).to_contain_text("Wrong token")
    assert panel.token
    await page.get_by_test_id("login-token").fill(panel.token)
    await page.get_by_test_id("login-submit").click()
    await expect(page.get_by_test_id("dashboard")).to_be_visible()


async def logged_in_page(
    browser: Browser, panel: Panel, *, wrong_first: bool = True, viewport: ViewportSize = DESKTOP
) -> tuple[Page, list[str]]:
    """A page in a context of its own, logged in as :func:`log_in` does, and what its CSP blocks from then on.

    Close it with ``page.context.close()``.
    """
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    violations = watch_for_violations(page)
    await log_in(page, panel, wrong_first=wrong_first)
    return page, violations


def running_stack(stacks: StackFactory, panel: Panel) -> str:
    """A fresh two-service stack, brought up through the panel's API."""
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    response = httpx2.post(
        f"{panel.base}/api/v1/stacks/{name}/up", headers={"Authorization": f"Bearer {panel.token}"}, timeout=120
    )
    assert response.status_code == 200, response.text
    return name
