"""The MCP App's stack view of another host's stack: its buttons act on that host, never on
a namesake of the gateway's own engine. Real Chromium, the official host bridge, a TLS engine."""

from __future__ import annotations

import re

import docker
import pytest
from mcp import Client
from playwright.async_api import Browser, expect

from gateway.mcp.server import build_server
from tests.chromium import browser
from tests.gateway.test_app_ui import forwarding, ps_view, start_view
from tests.gateway.test_fleet import PROJECT_LABEL, TICKER, FleetSetup, fleet_setup

__all__ = ["browser", "fleet_setup"]  # the fixtures, imported for pytest

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.browser, pytest.mark.dind]


async def test_the_stack_view_of_a_remote_stack_acts_on_its_host(
    fleet_setup: FleetSetup, browser: Browser, docker_client: docker.DockerClient
) -> None:
    project = fleet_setup.make("edge")
    # A namesake on the local host, with a folder and no containers: it must stay untouched.
    (fleet_setup.dirs["local"] / project).mkdir()
    (fleet_setup.dirs["local"] / project / "compose.yaml").write_text(TICKER.replace("{image}", fleet_setup.image))
    fleet_setup.projects.append(("local", project))
    async with Client(build_server(fleet_setup.fleet.local, fleet=fleet_setup.fleet)) as client:
        up = await client.call_tool("up", {"project": project, "host": "edge", "wait": True})
        assert not up.is_error, up.content
        ps_tool, html = await ps_view(client)
        result = await client.call_tool("ps", {"project": project, "host": "edge"})
        context, page, errors = await start_view(
            browser,
            html=html,
            tool=ps_tool,
            tool_input={"project": project, "host": "edge"},
            tool_result=result,
            call_tool=forwarding(client),
        )
        view = page.frame_locator("#app")
        await expect(view.get_by_test_id("stack-name")).to_have_text(f"edge/{project}")
        await expect(view.get_by_test_id("state-ticker")).to_have_text("running")

        await view.get_by_test_id("action-ticker-stop").click()
        await expect(view.get_by_test_id("state-ticker")).to_have_text(re.compile(r"^exited"), timeout=60_000)
        calls = await page.evaluate("window.hostCalls")
        assert calls == [
            {"name": "stop", "arguments": {"project": project, "host": "edge", "services": ["ticker"]}},
            {"name": "ps", "arguments": {"project": project, "host": "edge"}},
        ]
        assert errors == []
        await context.close()
    # On the edge engine the container stopped; on this machine's engine the namesake has none at all.
    states = fleet_setup.engines["edge"].docker(
        "ps", "-a", "--filter", f"label={PROJECT_LABEL}={project}", "--format", "{{.State}}"
    )
    assert states.stdout.split() == ["exited"]
    assert docker_client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"}) == []
