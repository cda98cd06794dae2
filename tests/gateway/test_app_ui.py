"""The MCP App: ``ps`` links the stack view, and the view renders a real stack in a real Chromium.

The harness page (``app_harness/host.html``) plays the host with the official host bridge from
``@modelcontextprotocol/ext-apps`` (installed from ``scripts/mcp-tools``); its tool calls go through
this test's MCP client to a real gateway, so a click in the view really stops a container.

Set ``MCP_APP_SCREENSHOTS=docs/images`` to save the screenshot the README shows.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, Tool
from playwright.async_api import Browser, BrowserContext, Page, Route, expect

from gateway.mcp.dashboard import APP_MIME_TYPE, APP_URI, EXTENSION_ID
from gateway.mcp.server import build_server
from gateway.operations import ComposeOperations
from tests.chromium import browser
from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory
from tests.gateway.conftest import GatewayProcess, start_gateway, stop_process
from tests.gateway.mcp_tools import mcp_tools_modules

__all__ = ["browser"]  # the fixture, imported for pytest

pytestmark = pytest.mark.anyio

HARNESS = Path(__file__).parent / "app_harness"
ORIGIN = "http://harness.test"
SHOTS = os.environ.get("MCP_APP_SCREENSHOTS")


async def test_ps_links_a_self_contained_mcp_app_resource(ops: ComposeOperations) -> None:
    async with Client(build_server(ops)) as client:
        ps = next(tool for tool in (await client.list_tools()).tools if tool.name == "ps")
        listed = {str(r.uri): r for r in (await client.list_resources()).resources}
        read = await client.read_resource(APP_URI)
        capabilities = client.server_capabilities
    assert (ps.meta or {})["ui"]["resourceUri"] == APP_URI
    assert listed[APP_URI].mime_type == APP_MIME_TYPE
    assert EXTENSION_ID in (capabilities.extensions or {})
    (content,) = read.contents
    assert content.mime_type == APP_MIME_TYPE
    html = content.text  # type: ignore[union-attr]
    # Self-contained: nothing is fetched, so the view works in a sandbox with no network at all.
    assert "<script src" not in html and "<link" not in html and not re.search(r"(src|href)=\"?(https?:)?//", html)
    assert (content.meta or {})["ui"]["csp"] == {"connectDomains": [], "resourceDomains": []}


def serve_harness(modules: Path) -> Callable[[Route], Awaitable[None]]:
    """A route handler serving the harness and the ext-apps packages, and nothing else."""
    roots = {"/harness/": HARNESS.resolve(), "/node_modules/": modules.resolve()}

    async def handle(route: Route) -> None:
        path = route.request.url.removeprefix(ORIGIN).split("?", 1)[0]
        if path == "/host.html":
            path = "/harness/host.html"
        for prefix, root in roots.items():
            if path.startswith(prefix):
                file = (root / path.removeprefix(prefix)).resolve()
                if file.is_relative_to(root) and file.is_file():
                    kind = "text/html" if file.suffix == ".html" else "text/javascript"
                    await route.fulfill(status=200, body=file.read_bytes(), headers={"content-type": kind})
                    return
        await route.fulfill(status=404, body="not in the harness")

    return handle


async def start_view(
    browser: Browser,
    *,
    html: str,
    tool: Tool,
    tool_input: dict[str, Any],
    tool_result: CallToolResult | dict[str, Any],
    call_tool: Callable[[str, str], Awaitable[str]],
) -> tuple[BrowserContext, Page, list[str]]:
    """The harness page in a context of its own, hosting the view of one ``ps`` result.

    ``call_tool`` answers the view's tools/call (name, JSON arguments -> JSON result). Returns the
    context (the caller closes it), the page and the page errors seen, a list that grows.
    """
    context = await browser.new_context(viewport={"width": 1040, "height": 560})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.route(f"{ORIGIN}/**", serve_harness(mcp_tools_modules()))
    await page.expose_function("hostCallTool", call_tool)
    await page.goto(f"{ORIGIN}/host.html")
    await expect(page.get_by_test_id("harness-status")).to_have_text("ready")
    app_info = await page.evaluate(
        "(args) => window.startApp(args)",
        {
            "html": html,
            "tool": wire(tool),
            "toolInput": tool_input,
            "toolResult": tool_result if isinstance(tool_result, dict) else wire(tool_result),
        },
    )
    assert app_info["name"] == "compose-agent-stack"
    return context, page, errors


def wire(message: Tool | CallToolResult) -> dict[str, Any]:
    """A tool or a result as JSON-RPC carries it."""
    return message.model_dump(mode="json", by_alias=True, exclude_none=True)


async def ps_view(client: Client) -> tuple[Tool, str]:
    """The ``ps`` tool as ``client`` lists it, and the view's HTML (the app resource)."""
    ps_tool = next(t for t in (await client.list_tools()).tools if t.name == "ps")
    html = (await client.read_resource(APP_URI)).contents[0].text  # type: ignore[union-attr]
    return ps_tool, html


async def rendering_only(name: str, arguments: str) -> str:
    """A host for a view that must only render: any tools/call it makes fails the test."""
    raise AssertionError(f"the view called {name} {arguments} while only rendering")


def forwarding(client: Client) -> Callable[[str, str], Awaitable[str]]:
    """A host that passes the view's tools/call on to ``client`` (for :func:`start_view`)."""

    async def call_tool(name: str, arguments: str) -> str:
        return json.dumps(wire(await client.call_tool(name, json.loads(arguments))))

    return call_tool


@pytest.mark.docker
@pytest.mark.browser
async def test_the_stack_view_renders_a_running_stack_and_its_buttons_call_the_tools(
    gateway: GatewayProcess, stacks: StackFactory, browser: Browser
) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    async with httpx2.AsyncClient(headers=gateway.headers(), timeout=120) as http:
        async with Client(streamable_http_client(gateway.url, http_client=http)) as client:
            up = await client.call_tool("up", {"project": project, "wait": True})
            assert not up.is_error, up.content
            ps_tool, html = await ps_view(client)
            result = await client.call_tool("ps", {"project": project})
            context, page, errors = await start_view(
                browser,
                html=html,
                tool=ps_tool,
                tool_input={"project": project},
                tool_result=result,
                call_tool=forwarding(client),
            )

            view = page.frame_locator("#app")
            await expect(view.get_by_test_id("stack-name")).to_have_text(project)
            await expect(view.get_by_test_id("stack-count")).to_have_text("2/2 running")
            await expect(view.get_by_test_id("state-worker")).to_have_text("running")
            await expect(view.get_by_test_id("state-web")).to_have_text("running")
            await expect(view.get_by_test_id("health-web")).to_have_text("healthy")
            await expect(view.get_by_test_id("uptime-web")).to_have_text(re.compile(r"^\d+(s|m \d+s)$"))
            # The host sized the frame to the view's content, so nothing is cut off.
            frame_box = await page.locator("#app").bounding_box()
            assert frame_box is not None and frame_box["height"] > 150

            # A button is a tools/call through the host: the worker really stops, and the view shows it.
            await view.get_by_test_id("action-worker-stop").click()
            await expect(view.get_by_test_id("state-worker")).to_have_text(re.compile(r"^exited"), timeout=60_000)
            await expect(view.get_by_test_id("status")).to_contain_text("stop finished")
            await expect(view.get_by_test_id("stack-count")).to_have_text("1/2 running")
            if SHOTS:
                Path(SHOTS).mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(Path(SHOTS) / "mcp-app.png"), full_page=True)
            stopped = await client.call_tool("ps", {"project": project})
            assert stopped.structured_content is not None
            states = {s["service"]: s["state"] for s in stopped.structured_content["services"]}
            assert states == {"web": "running", "worker": "exited"}

            # The view follows the host's theme.
            await page.evaluate("window.bridge.sendHostContextChange({theme: 'dark'})")
            await expect(view.locator("html")).to_have_attribute("data-theme", "dark")

            await view.get_by_test_id("action-worker-start").click()
            await expect(view.get_by_test_id("state-worker")).to_have_text("running", timeout=60_000)
            calls = await page.evaluate("window.hostCalls")
            assert calls == [
                {"name": "stop", "arguments": {"project": project, "services": ["worker"]}},
                {"name": "ps", "arguments": {"project": project}},
                {"name": "start", "arguments": {"project": project, "services": ["worker"]}},
                {"name": "ps", "arguments": {"project": project}},
            ]
            assert errors == []
            await context.close()
    audit = [json.loads(line) for line in gateway.audit.read_text().splitlines()]
    outcomes = [a for a in audit if a.get("phase") == "outcome" and a["tool"] in ("stop", "start")]
    assert [(a["tool"], a["outcome"], a["caller"]) for a in outcomes] == [
        ("stop", "ok", "compose_agent_token"),
        ("start", "ok", "compose_agent_token"),
    ]


@pytest.mark.docker
@pytest.mark.browser
async def test_a_button_whose_call_waits_for_a_person_offers_the_approval_page_to_open(
    tmp_path: Path, stacks: StackFactory, browser: Browser
) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"policy": {"approve": ["stop"]}, "panel_url": "https://panel.example.com"}))
    gateway = start_gateway(tmp_path, stacks.root, env={"CONFIG_PATH": str(config)})
    try:
        async with httpx2.AsyncClient(headers=gateway.headers(), timeout=120) as http:
            async with Client(streamable_http_client(gateway.url, http_client=http)) as client:
                assert not (await client.call_tool("up", {"project": project, "wait": True})).is_error
                ps_tool, html = await ps_view(client)
                result = await client.call_tool("ps", {"project": project})
                context, page, _errors = await start_view(
                    browser,
                    html=html,
                    tool=ps_tool,
                    tool_input={"project": project},
                    tool_result=result,
                    call_tool=forwarding(client),
                )
                view = page.frame_locator("#app")
                await expect(view.get_by_test_id("state-worker")).to_have_text("running")
                await expect(view.get_by_test_id("approval")).to_be_hidden()
                await view.get_by_test_id("action-worker-stop").click()
                await expect(view.get_by_test_id("status")).to_contain_text("waits for a person's approval")
                await view.get_by_test_id("approval-link").click()
                opened = await page.wait_for_function("window.openedLinks.length > 0 && window.openedLinks")
                (url,) = await opened.json_value()
                assert re.fullmatch(r"https://panel\.example\.com/approvals/[0-9a-f]{32}", url)
                # Nothing ran: the worker still runs, and the view says so.
                await expect(view.get_by_test_id("state-worker")).to_have_text("running")
                await context.close()
            listing = json.loads(await client_read(gateway, "compose://approvals"))["approvals"]
    finally:
        stop_process(gateway.process)
    assert [(a["tool"], a["status"], a["url"]) for a in listing] == [("stop", "pending", url)]


async def client_read(gateway: GatewayProcess, uri: str) -> str:
    async with httpx2.AsyncClient(headers=gateway.headers(), timeout=60) as http:
        async with Client(streamable_http_client(gateway.url, http_client=http)) as client:
            return (await client.read_resource(uri)).contents[0].text  # type: ignore[union-attr]
