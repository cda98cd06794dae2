"""A headless Chromium for the browser tests of the panel and of the MCP App.

Import the fixture into a test module that needs it: ``from tests.chromium import browser``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, async_playwright

__all__ = ["CHROMIUM_ARGS", "browser"]

# Debian's chromium, as root in a container: no sandbox, no GPU, and nothing fetched behind the tests' back.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()
