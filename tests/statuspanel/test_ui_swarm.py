"""The panel's view of a swarm stack on several nodes: the swarm's nodes and where the stack's tasks run.

The page test runs a real gateway (``compose-agent serve``) pointed at ``swarm3``'s manager over TLS
with the ``DOCKER_*`` variables, the panel in front of it, and headless Chromium.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from playwright.async_api import Browser, expect
from starlette.testclient import TestClient

from gateway.api import PsResult, ServiceStatus, StackInfo, StackList, SwarmNode
from gateway.swarm.backend import SwarmBackend
from statuspanel.app import create_app
from statuspanel.credentials import Authenticator
from tests.conftest import StackFactory
from tests.engines import Swarm
from tests.gateway.swarm3_fixtures import LIMITED, backend3, deploy
from tests.statuspanel.browser import browser, logged_in_page, shot
from tests.statuspanel.conftest import APP_BASE, Gateway, MemoryBackend, Panel, launch_gateway, start_panel

__all__ = ["browser", "backend3"]  # the fixtures, imported for pytest


class NodesBackend(MemoryBackend):
    """A swarm stack of three replicas on three nodes, one of them drained and one task waiting."""

    async def list_stacks(self) -> StackList:
        listing = await super().list_stacks()
        return StackList(
            stacks=[*listing.stacks, StackInfo(name="edge", external=False, containers=3, running=2, target="swarm")]
        )

    async def ps(self, project: str, host: str | None = None) -> PsResult:
        if project != "edge":
            return await super().ps(project, host)
        rows = [
            ServiceStatus(service="web", container="edge_web.1.a", state="running", node="m1", desired_state="running"),
            ServiceStatus(service="web", container="edge_web.2.b", state="running", node="w1", desired_state="running"),
            ServiceStatus(
                service="web",
                container="edge_web.3.c",
                state="pending",
                desired_state="running",
                error="no suitable node (max replicas per node limit exceed)",
            ),
        ]
        nodes = [
            SwarmNode(hostname="m1", role="manager", availability="active", state="ready", leader=True, tasks=1),
            SwarmNode(hostname="w1", role="worker", availability="active", state="ready", tasks=1),
            SwarmNode(hostname="w2", role="worker", availability="drain", state="ready", tasks=0),
            SwarmNode(hostname="w3", role="worker", availability="active", state="down", tasks=0),
        ]
        return PsResult(project=project, services=rows, nodes=nodes)


def test_a_swarm_card_lists_every_node_with_its_tasks_and_whether_it_takes_new_ones() -> None:
    app = create_app(NodesBackend(), Authenticator(), session_secret="s" * 32)
    with TestClient(app, base_url=APP_BASE, follow_redirects=False) as client:
        html = client.get("/ui/dashboard").text
    card = html[html.index('data-testid="stack-edge"') :]
    nodes = card[card.index('data-testid="nodes-edge"') :]
    chips = {m[0]: m[1] for m in re.findall(r'data-testid="node-edge-(\w+)"(.*?)</li>', nodes, re.DOTALL)}
    assert list(chips) == ["m1", "w1", "w2", "w3"]
    assert ">leader<" in chips["m1"] and ">1 task<" in chips["m1"]
    assert ">worker<" in chips["w1"] and 'testid="availability"' not in chips["w1"] and "node-state" not in chips["w1"]
    assert re.search(r'data-testid="availability">drain<', chips["w2"]) and ">0 tasks<" in chips["w2"]
    assert re.search(r'data-testid="node-state">down<', chips["w3"])
    assert "no suitable node (max replicas per node limit exceed)" in card
    # A Compose stack has no node list.
    assert 'data-testid="nodes-shop"' not in html


@pytest.fixture
def swarm_gateway(swarm3: Swarm, stacks: StackFactory, tmp_path: Path) -> Iterator[Gateway]:
    """``compose-agent serve`` reaching swarm3's manager over TLS, as an operator configures it."""
    agent_token, panel_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = {"COMPOSE_AGENT_TOKEN": agent_token, "STATUS_PANEL_TOKEN": panel_token, **swarm3.docker_env()}
    gw = launch_gateway(stacks, tmp_path, env=env, agent_token=agent_token, panel_token=panel_token)
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def swarm_panel(swarm_gateway: Gateway, tmp_path: Path) -> Iterator[Panel]:
    p = start_panel(tmp_path, env={"COMPOSE_AGENT_URL": swarm_gateway.mcp_url}, token=swarm_gateway.panel_token)
    try:
        yield p
    finally:
        p.stop()


@pytest.mark.anyio
@pytest.mark.browser
async def test_the_panel_shows_the_nodes_of_a_three_node_swarm_and_where_each_task_runs(
    swarm3: Swarm, backend3: SwarmBackend, stacks: StackFactory, swarm_panel: Panel, browser: Browser
) -> None:
    name = await deploy(backend3, stacks, LIMITED)  # four replicas, one per node: one waits
    page, violations = await logged_in_page(browser, swarm_panel, wrong_first=False)
    await page.get_by_test_id("stack-filter").fill(name)
    await expect(page.get_by_test_id(f"replicas-{name}-web")).to_have_text("3/4 running", timeout=60_000)
    tasks = page.get_by_test_id(f"task-{name}-web")
    await expect(tasks).to_have_count(4)
    placed = {(await tasks.nth(i).get_by_test_id("node").inner_text()).strip() for i in range(4)}
    assert placed == {engine.name for engine in swarm3.engines} | {"no node yet"}
    await expect(page.get_by_test_id(f"stack-{name}")).to_contain_text("no suitable node")
    for engine in swarm3.engines:
        chip = page.get_by_test_id(f"node-{name}-{engine.name}")
        await expect(chip.get_by_test_id("node-tasks")).to_have_text("1 task")
    await expect(page.get_by_test_id(f"node-{name}-{swarm3.manager.name}")).to_contain_text("leader")
    await shot(page, "dashboard-swarm-nodes")

    # A drained node shows as such, and its task leaves it (the page refreshes on its own).
    worker = swarm3.workers[0]
    await anyio.to_thread.run_sync(swarm3.drain, worker)
    chip = page.get_by_test_id(f"node-{name}-{worker.name}")
    await expect(chip.get_by_test_id("availability")).to_have_text("drain", timeout=30_000)
    await expect(chip.get_by_test_id("node-tasks")).to_have_text("0 tasks", timeout=60_000)
    await expect(page.get_by_test_id(f"replicas-{name}-web")).to_have_text("2/4 running", timeout=60_000)
    assert violations == []
    await page.context.close()
