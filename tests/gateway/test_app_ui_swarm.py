"""The MCP App's stack view of a swarm stack: each task on its node, and the swarm's nodes.

A real single-node swarm on the shared engine, the gateway's own ``ps`` and real Chromium with the
official host bridge, as in test_app_ui.py (``MCP_APP_SCREENSHOTS`` saves a screenshot here too).
"""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest
from mcp import Client
from playwright.async_api import Browser, expect

from gateway.mcp.server import build_server
from gateway.operations import ComposeOperations
from tests.chromium import browser
from tests.conftest import StackFactory
from tests.gateway.swarm_fixtures import TWO_REPLICAS, remove_stack, swarm
from tests.gateway.test_app_ui import SHOTS, ps_view, rendering_only, start_view

__all__ = ["browser", "swarm"]  # the fixtures, imported for pytest

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.browser]


async def test_the_stack_view_of_a_swarm_stack_shows_each_task_on_its_node_and_the_nodes(
    ops: ComposeOperations, stacks: StackFactory, swarm: str, browser: Browser
) -> None:
    project = stacks.make(TWO_REPLICAS)
    try:
        async with Client(build_server(ops)) as client:
            up = await client.call_tool("up", {"project": project, "wait": True})
            assert not up.is_error, up.content
            ps_tool, html = await ps_view(client)
            result = await client.call_tool("ps", {"project": project})
        data = result.structured_content or {}
        (node,) = data["nodes"]
        tasks = [s for s in data["services"] if s["state"] == "running"]
        assert len(tasks) == 2 and {t["node"] for t in tasks} == {node["hostname"]}

        context, page, errors = await start_view(
            browser,
            html=html,
            tool=ps_tool,
            tool_input={"project": project},
            tool_result=result,
            call_tool=rendering_only,
        )
        view = page.frame_locator("#app")
        await expect(view.get_by_test_id("stack-name")).to_have_text(project)
        await expect(view.get_by_test_id("stack-count")).to_have_text(re.compile(r"^2/\d+ running$"))
        for task in tasks:
            await expect(view.get_by_test_id(f"node-{task['container']}")).to_have_text(node["hostname"])
        # The swarm's node, its role and how many of the stack's tasks it runs.
        await expect(view.get_by_test_id("nodes")).to_be_visible()
        shown = view.get_by_test_id(f"node-{node['hostname']}")
        await expect(shown).to_contain_text("leader")
        await expect(view.get_by_test_id(f"tasks-{node['hostname']}")).to_have_text(f"{node['tasks']} tasks")
        assert node["tasks"] == 2 and errors == []
        if SHOTS:
            await page.screenshot(path=str(Path(SHOTS) / "mcp-app-swarm.png"), full_page=True)
        await context.close()
    finally:
        await anyio.to_thread.run_sync(remove_stack, project)


async def test_a_compose_stack_shows_no_nodes(ops: ComposeOperations, browser: Browser) -> None:
    # Rendering only: a Compose ps result carries no nodes, and the view shows none.
    async with Client(build_server(ops)) as client:
        ps_tool, html = await ps_view(client)
    result = {
        "content": [{"type": "text", "text": "{}"}],
        "structuredContent": {"project": "shop", "host": "local", "services": [{"service": "web", "state": "running"}]},
    }

    context, page, errors = await start_view(
        browser, html=html, tool=ps_tool, tool_input={"project": "shop"}, tool_result=result, call_tool=rendering_only
    )
    view = page.frame_locator("#app")
    await expect(view.get_by_test_id("state-web")).to_have_text("running")
    await expect(view.get_by_test_id("nodes")).to_be_hidden()
    assert await view.get_by_test_id("node-web").count() == 0 and errors == []
    await context.close()
