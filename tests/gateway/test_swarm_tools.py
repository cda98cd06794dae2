"""Swarm stacks through the gateway's own tools, beside a Compose stack, on a real single-node swarm."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from typing import Any

import anyio
import docker
import pytest
from mcp import Client

from gateway.errors import InvalidInput, PolicyRefused
from gateway.mcp.server import build_server
from gateway.operations import ComposeOperations
from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory
from tests.gateway.swarm_fixtures import TWO_REPLICAS, remove_stack, swarm

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

__all__ = ["swarm"]  # the fixture, imported for pytest


@pytest.fixture
async def swarm_stacks(stacks: StackFactory, swarm: str) -> AsyncIterator[StackFactory]:
    """The stacks factory, with every stack it made also removed from the swarm afterwards."""
    yield stacks
    for name in stacks.projects:
        await anyio.to_thread.run_sync(remove_stack, name)


def labelled(label: str) -> dict[str, Any]:
    client = docker.from_env()
    try:
        return {
            "compose": client.containers.list(all=True, filters={"label": f"com.docker.compose.project={label}"}),
            "swarm": client.containers.list(all=True, filters={"label": f"com.docker.stack.namespace={label}"}),
            "services": client.services.list(filters={"label": f"com.docker.stack.namespace={label}"}),
        }
    finally:
        client.close()


async def test_a_swarm_stack_runs_on_swarm_and_a_plain_one_beside_it_on_compose(
    ops: ComposeOperations, swarm_stacks: StackFactory
) -> None:
    on_swarm = swarm_stacks.make(TWO_REPLICAS)
    on_compose = swarm_stacks.make(WEB_WORKER, files=STACK_FILES)

    result = await ops.up(on_swarm, wait=True)
    assert result.message.endswith("(Docker Swarm)") and "running: web 2/2" in result.events
    await ops.up(on_compose, wait=True)

    swarm_side, compose_side = labelled(on_swarm), labelled(on_compose)
    assert swarm_side["compose"] == [] and len(swarm_side["swarm"]) == 2
    assert len(compose_side["compose"]) == 2 and compose_side["services"] == []

    listed = {s.name: s for s in (await ops.list_stacks()).stacks}
    assert (listed[on_swarm].target, listed[on_swarm].running, listed[on_swarm].external) == ("swarm", 2, False)
    assert (listed[on_compose].target, listed[on_compose].running) == ("compose", 2)

    ps = await ops.ps(on_swarm)
    assert [(s.service, s.state, s.desired_state) for s in ps.services] == [("web", "running", "running")] * 2
    assert (await ops.ps(on_compose)).services[0].node is None

    async def both_replicas_logged() -> bool:
        text = (await ops.logs(on_swarm, tail=20)).text
        return "web.1 | tick" in text and "web.2 | tick" in text

    with anyio.fail_after(60):
        while not await both_replicas_logged():
            await anyio.sleep(0.2)

    # The same limits as Compose logs: since, grep and the byte cap, newest lines kept.
    bounded = await ops.logs(on_swarm, tail=50, since="10m", grep=r"tick \d*7$", max_bytes=1024)
    assert bounded.lines and all(line.endswith("7") for line in bounded.text.splitlines())
    assert len(bounded.text) <= 1024

    before = {s.container for s in ps.services}
    await ops.service_action("restart", on_swarm)
    after = (await ops.ps(on_swarm)).services
    assert len(after) == 2 and before.isdisjoint({s.container for s in after})

    down = await ops.down(on_swarm)
    assert any(e.startswith(f"Removing service {on_swarm}_web") for e in down.events)
    assert labelled(on_swarm) == {"compose": [], "swarm": [], "services": []}
    assert [(s.service, s.state) for s in (await ops.ps(on_swarm)).services] == [("web", "missing")]
    # The Compose stack was never touched by any of it.
    assert all(s.state == "running" for s in (await ops.ps(on_compose)).services)


async def test_the_policy_guard_refuses_a_host_bind_in_a_swarm_stack_before_anything_is_created(
    ops: ComposeOperations, swarm_stacks: StackFactory
) -> None:
    hostile = TWO_REPLICAS.replace("    deploy:\n", "    volumes: ['/etc:/host-etc:ro']\n    deploy:\n", 1)
    name = swarm_stacks.make(hostile)
    with pytest.raises(PolicyRefused, match="host_bind: service 'web'"):
        await ops.up(name)
    assert labelled(name) == {"compose": [], "swarm": [], "services": []}
    assert ops.audit is not None
    lines = [json.loads(line) for line in ops.audit.path.read_text().splitlines()]
    assert [(r["tool"], r["outcome"]) for r in lines if r["phase"] == "outcome"] == [("up", "refused")]


async def test_a_swarm_stack_without_its_folder_is_listed_as_external_and_can_be_brought_down(
    ops: ComposeOperations, swarm_stacks: StackFactory
) -> None:
    name = swarm_stacks.make(TWO_REPLICAS)
    await ops.up(name)
    shutil.rmtree(swarm_stacks.root / name)

    listed = {s.name: s for s in (await ops.list_stacks()).stacks}
    assert (listed[name].target, listed[name].external) == ("swarm", True)
    assert {s.service for s in (await ops.ps(name)).services} == {"web"}
    with pytest.raises(InvalidInput, match="is external"):
        await ops.up(name)
    await ops.down(name)
    assert labelled(name)["services"] == []


async def test_the_tools_return_swarm_tasks_in_the_ps_schema_with_node_and_desired_state(
    ops: ComposeOperations, swarm_stacks: StackFactory
) -> None:
    name = swarm_stacks.make(TWO_REPLICAS)
    async with Client(build_server(ops)) as client:
        up = await client.call_tool("up", {"project": name, "wait": True})
        assert not up.is_error, up.content
        ps = await client.call_tool("ps", {"project": name})
        listed = await client.call_tool("list_stacks", {})
    assert not ps.is_error and ps.structured_content is not None
    tasks = ps.structured_content["services"]
    assert len(tasks) == 2 and all(t["node"] and t["desired_state"] == "running" for t in tasks)
    assert listed.structured_content is not None
    assert {s["name"]: s["target"] for s in listed.structured_content["stacks"]}[name] == "swarm"
