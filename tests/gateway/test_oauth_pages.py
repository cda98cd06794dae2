"""The login and consent pages in a real Chromium, with JavaScript off: a person signs in and answers.

The client is a loopback redirect URI served by the test, as a native app's would be; the browser
ends up there with the code (or the refusal), and the code is exchanged like a client does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from playwright.async_api import Browser, expect

from tests.chromium import browser
from tests.conftest import free_port
from tests.gateway.conftest import stop_process
from tests.gateway.oauth_fixtures import PASSWORD, OAuthGateway, start_oauth_gateway
from tests.gateway.oauth_protocol import Pkce, Registered, authorize_url, exchange, register
from tests.statuspanel.browser import shot, watch_for_violations
from tests.statuspanel.test_shared_css import PARTS, panel_css, shared_parts

__all__ = ["browser"]

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.browser]


class _Callback:
    """A client's loopback redirect URI: remembers what the browser brought back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/callback"
        self.answers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                if urlsplit(self.path).path == "/callback":  # not the browser's /favicon.ico
                    outer.answers.append({k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()})
                body = b"<!doctype html><title>back in the app</title><p id=done>Done.</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def callback() -> Iterator[_Callback]:
    server = _Callback()
    yield server
    server.close()


@pytest.fixture
def oauth(tmp_path: Path) -> Iterator[OAuthGateway]:
    (tmp_path / "stacks").mkdir()
    gateway = start_oauth_gateway(tmp_path, tmp_path / "stacks", people={"mia": ["compose:read", "compose:write:site"]})
    yield gateway
    stop_process(gateway.gw.process)


async def test_a_person_signs_in_and_allows_without_javascript(
    oauth: OAuthGateway, callback: _Callback, browser: Browser
) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        client = await register(http, oauth.public, redirect=callback.url, name="Chromium's app")
        pkce = Pkce.new()
        context = await browser.new_context(java_script_enabled=False)
        try:
            page = await context.new_page()
            problems = watch_for_violations(page)
            await page.goto(authorize_url(oauth.public, client, pkce, scope="compose:read compose:write"))
            card = page.get_by_test_id("login-card")
            await expect(card).to_be_visible()
            await expect(page.get_by_test_id("client-name")).to_have_text("Chromium's app")
            # The panel's look: its palette and its card.
            background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert background == "rgb(246, 247, 249)"
            await shot(page, "oauth-login")
            await page.get_by_test_id("login-username").fill("mia")
            await page.get_by_test_id("login-password").fill("not her password at all")
            await page.get_by_test_id("login-submit").click()
            await expect(page.get_by_test_id("login-error")).to_have_text("Wrong username or password.")
            await page.get_by_test_id("login-password").fill(PASSWORD)
            await page.get_by_test_id("login-submit").click()
            # Who asks, where it returns, what it would get.
            await expect(page.get_by_test_id("consent-card")).to_be_visible()
            await expect(page.get_by_test_id("consent-person")).to_have_text("mia")
            await expect(page.get_by_test_id("redirect-host")).to_have_text(f"127.0.0.1:{callback.port}")
            await expect(page.get_by_test_id("scope")).to_have_text(["compose:read", "compose:write:site"])
            await expect(page.get_by_test_id("consent-scopes")).to_contain_text("restart, start and stop the stack")
            await expect(page.get_by_test_id("consent-deny")).to_be_visible()
            await shot(page, "oauth-consent")
            await page.get_by_test_id("consent-allow").click()
            await expect(page.locator("#done")).to_have_text("Done.")
            assert problems == []
        finally:
            await context.close()
        answer = callback.answers[-1]
        assert answer["state"] == "the-state" and answer["iss"] == oauth.public
        tokens = await exchange(http, oauth.public, client, answer["code"], pkce)
    assert tokens.status_code == 200 and tokens.json()["scope"] == "compose:read compose:write:site"


async def test_deny_takes_the_person_back_with_nothing(
    oauth: OAuthGateway, callback: _Callback, browser: Browser
) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        client = await register(http, oauth.public, redirect=callback.url)
    context = await browser.new_context(java_script_enabled=False)
    try:
        page = await context.new_page()
        await page.goto(authorize_url(oauth.public, client, Pkce.new()))
        await page.get_by_test_id("login-username").fill("MIA")  # as a phone would type it
        await page.get_by_test_id("login-password").fill(PASSWORD)
        await page.get_by_test_id("login-submit").click()
        await page.get_by_test_id("consent-deny").click()
        await expect(page.locator("#done")).to_be_visible()
    finally:
        await context.close()
    answer = callback.answers[-1]
    assert answer["error"] == "access_denied" and answer["iss"] == oauth.public and "code" not in answer


async def test_the_pages_cannot_be_framed_by_another_site(oauth: OAuthGateway, browser: Browser) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        client: Registered = await register(http, oauth.public)
    context = await browser.new_context()
    try:
        page = await context.new_page()
        target = authorize_url(oauth.public, client, Pkce.new())
        # A page on another origin (localhost is not 127.0.0.1) tries to frame the login.
        await page.goto("about:blank")
        await page.set_content(f'<iframe id="f" src="{target}" width="600" height="400"></iframe>')
        frame = page.frame_locator("#f")
        await expect(frame.get_by_test_id("login-card")).to_have_count(0)
    finally:
        await context.close()


@pytest.mark.parametrize("part", PARTS)
def test_the_pages_carry_the_panels_shared_css_unchanged(part: str) -> None:
    ours = resources.files("gateway.mcp.oauth").joinpath("static/oauth.css").read_text(encoding="utf-8")
    assert shared_parts(ours)[part] == shared_parts(panel_css())[part]
