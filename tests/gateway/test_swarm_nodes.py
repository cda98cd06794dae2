"""Swarm stacks on three nodes (``swarm3``: a manager over TLS, two workers), through the gateway's backend.

What one node hides: tasks placed on other nodes, a task the scheduler cannot place and why, a
drained node and a reactivated one, logs gathered from every node, and ``down`` leaving nothing on
any of them. The backend reaches the manager exactly as a gateway configured with ``DOCKER_HOST``,
``DOCKER_TLS_VERIFY`` and ``DOCKER_CERT_PATH`` does: Engine API calls over TLS, ``docker stack``
commands with those variables.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from gateway.errors import EngineUnavailable, SwarmFailed
from gateway.models import ServiceStatus, SwarmNode
from gateway.swarm.api import _side_by_side
from gateway.swarm.backend import SwarmBackend
from tests.conftest import StackFactory
from tests.engines import Swarm
from tests.gateway.swarm3_fixtures import LIMITED, SPREAD, backend3, deploy, model_of
from tests.polling import eventually

pytestmark = [pytest.mark.anyio]

__all__ = ["backend3"]  # the fixture, imported for pytest


async def ps(backend: SwarmBackend, name: str) -> tuple[list[ServiceStatus], list[SwarmNode]]:
    return await anyio.to_thread.run_sync(backend.ps_nodes, name)


def running(rows: list[ServiceStatus]) -> list[ServiceStatus]:
    return [r for r in rows if r.state == "running" and r.desired_state == "running"]


def hostnames(swarm: Swarm) -> set[str]:
    return {engine.name for engine in swarm.engines}


async def settled(backend: SwarmBackend, name: str, check: Any, what: str) -> list[ServiceStatus]:
    async def ready() -> list[ServiceStatus]:
        rows, _ = await ps(backend, name)
        return rows if check(rows) else []

    return await eventually(ready, timeout=90, interval=0.3, what=what)


async def test_ps_shows_each_task_on_its_node_and_why_one_cannot_be_placed(
    backend3: SwarmBackend, swarm3: Swarm, stacks: StackFactory
) -> None:
    name = await deploy(backend3, stacks, LIMITED)
    rows = await settled(
        backend3,
        name,
        lambda rows: len(running(rows)) == 3 and any(r.state == "pending" for r in rows),
        "three tasks running and the fourth pending",
    )
    assert len(rows) == 4 and {r.service for r in rows} == {"web"}
    assert {r.node for r in running(rows)} == hostnames(swarm3)  # one per node, every node
    [waiting] = [r for r in rows if r.state == "pending"]
    assert waiting.desired_state == "running" and waiting.node is None
    assert waiting.error is not None and "no suitable node" in waiting.error
    assert "max replicas per node" in waiting.error

    _, nodes = await ps(backend3, name)
    assert [(n.hostname, n.role, n.leader) for n in nodes][0] == (swarm3.manager.name, "manager", True)
    assert {n.hostname for n in nodes} == hostnames(swarm3)
    assert all(n.availability == "active" and n.state == "ready" and n.tasks == 1 for n in nodes)

    # Waiting for it says why it never converges, instead of a bare count.
    backend3.converge_timeout = 3
    with pytest.raises(SwarmFailed, match=r"running: web 3/4 \(1 pending: no suitable node"):
        await backend3.deploy(name, await model_of(stacks, name), resolve_image="never", wait=True)


async def test_draining_a_node_moves_its_tasks_and_activating_it_lets_them_back(
    backend3: SwarmBackend, swarm3: Swarm, stacks: StackFactory
) -> None:
    spread = await deploy(backend3, stacks, SPREAD, wait=True)
    limited = await deploy(backend3, stacks, LIMITED)
    await settled(backend3, limited, lambda rows: len(running(rows)) == 3, "three tasks of web running")
    worker = swarm3.workers[0]

    await anyio.to_thread.run_sync(swarm3.drain, worker)
    # api's task moves to another node; web's cannot (one per node), so two of its tasks wait.
    moved = await settled(
        backend3,
        spread,
        lambda rows: len(running(rows)) == 3 and worker.name not in {r.node for r in running(rows)},
        "api's three tasks running off the drained node",
    )
    assert {r.node for r in running(moved)} <= hostnames(swarm3) - {worker.name}
    rows = await settled(
        backend3,
        limited,
        lambda rows: len(running(rows)) == 2 and sum(r.state == "pending" for r in rows) == 2,
        "web: two tasks running, two pending",
    )
    assert worker.name not in {r.node for r in running(rows)}
    _, nodes = await ps(backend3, limited)
    drained = next(n for n in nodes if n.hostname == worker.name)
    assert drained.availability == "drain" and drained.tasks == 0

    await anyio.to_thread.run_sync(swarm3.activate, worker)
    # The scheduler places web's waiting task there again.
    back = await settled(
        backend3,
        limited,
        lambda rows: len(running(rows)) == 3 and worker.name in {r.node for r in running(rows)},
        "web's task placed on the reactivated node",
    )
    assert {r.node for r in running(back)} == hostnames(swarm3)
    _, nodes = await ps(backend3, limited)
    assert next(n for n in nodes if n.hostname == worker.name).availability == "active"


async def test_restart_rolls_every_task_on_every_node(
    backend3: SwarmBackend, swarm3: Swarm, stacks: StackFactory
) -> None:
    name = await deploy(backend3, stacks, SPREAD, wait=True)
    before, _ = await ps(backend3, name)
    assert {r.node for r in running(before)} == hostnames(swarm3)

    events = await backend3.restart(name)
    assert "api: rolling restart" in events
    after = await settled(backend3, name, lambda rows: len(running(rows)) == 3, "three new tasks running")
    assert {r.container for r in before}.isdisjoint({r.container for r in after})
    assert all(r.node in hostnames(swarm3) for r in running(after))


async def test_logs_gather_lines_from_tasks_on_every_node(
    backend3: SwarmBackend, swarm3: Swarm, stacks: StackFactory
) -> None:
    name = await deploy(backend3, stacks, SPREAD, wait=True)
    rows, _ = await ps(backend3, name)
    assert {r.node for r in running(rows)} == hostnames(swarm3)

    async def every_node_logged() -> str:
        logs = await backend3.logs(
            name, services=None, tail=5, since=None, grep=None, timestamps=False, max_bytes=64 * 1024
        )
        return logs.text if all(f"tick on {host}" in logs.text for host in hostnames(swarm3)) else ""

    text = await eventually(every_node_logged, timeout=60, interval=0.5, what="a line from every node")
    # Labelled by slot, as on one node.
    assert {line.split(" | ", 1)[0] for line in text.splitlines()} == {"api.1", "api.2", "api.3"}


async def test_down_leaves_no_task_service_or_network_on_any_node(
    backend3: SwarmBackend, swarm3: Swarm, stacks: StackFactory
) -> None:
    name = await deploy(backend3, stacks, SPREAD, wait=True)
    label = f"label=com.docker.stack.namespace={name}"
    for engine in swarm3.engines:  # the stack really was on every node: its container and its network
        assert engine.docker("ps", "-q", "--filter", label).stdout.strip(), engine.name
        assert engine.docker("network", "ls", "-q", "--filter", label).stdout.strip(), engine.name

    events = await backend3.remove(name)
    assert f"Removing service {name}_api" in events

    manager = swarm3.manager
    assert manager.docker("service", "ls", "-q", "--filter", label).stdout.strip() == ""
    assert manager.docker("stack", "ls", "--format", "{{.Name}}").stdout.split().count(name) == 0
    for engine in swarm3.engines:
        assert engine.docker("ps", "-aq", "--filter", label).stdout.strip() == "", engine.name
        assert engine.docker("network", "ls", "-q", "--filter", label).stdout.strip() == "", engine.name
    assert await ps(backend3, name) == ([], [])


async def test_reads_side_by_side_raise_the_engines_own_error_not_a_group() -> None:
    async def answers() -> str:
        return "tasks"

    async def fails() -> str:
        raise EngineUnavailable("the engine at tcp://manager:2376 is unreachable")

    assert await _side_by_side(answers(), answers()) == ["tasks", "tasks"]
    with pytest.raises(EngineUnavailable, match="unreachable"):
        await _side_by_side(answers(), fails())
