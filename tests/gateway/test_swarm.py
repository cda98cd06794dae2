"""Swarm stacks on a real single-node swarm: deploy, tasks, logs, rolling restart, scale, removal."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest

from gateway.compose.cli import ComposeCli
from gateway.engine.client import Engine
from gateway.errors import InvalidInput, SwarmFailed, SwarmUnavailable
from gateway.swarm.backend import STOPPED_REPLICAS_LABEL, SwarmBackend
from gateway.swarm.dockercli import DockerCli
from tests.conftest import StackFactory
from tests.gateway.swarm_fixtures import TWO_REPLICAS, remove_stack, swarm
from tests.polling import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

__all__ = ["swarm"]  # the fixture, imported for pytest


FAILING = """
x-compose-agent:
  target: swarm
services:
  broken:
    image: {image}
    command: ["sh", "-c", "echo about to fail; exit 3"]
    deploy:
      restart_policy: {delay: 100ms}
"""


async def poll(predicate: Any, timeout: float = 60.0) -> Any:
    return await eventually(predicate, timeout=timeout, interval=0.2)


@pytest.fixture
def backend(swarm: str) -> Iterator[SwarmBackend]:
    engine = Engine()
    locate = lambda: DockerCli.locate(None, dict(os.environ))  # noqa: E731 - a locator, as the gateway passes one
    yield SwarmBackend(engine, locate, converge_timeout=120, poll_interval=0.2, settle=1.0)
    engine.close()


@pytest.fixture
async def swarm_stacks(stacks: StackFactory) -> AsyncIterator[StackFactory]:
    """The stacks factory, with every stack it made also removed from the swarm afterwards."""
    yield stacks
    for name in stacks.projects:
        await anyio.to_thread.run_sync(remove_stack, name)


async def model_of(stacks: StackFactory, name: str) -> dict[str, Any]:
    """Compose's own normalised model of a stack: what the guard judges and Swarm is given."""
    cli = ComposeCli.locate(None, dict(os.environ))
    folder = stacks.root / name
    out = await cli.run(name, ["config", "--format", "json"], compose_file=folder / "compose.yaml", cwd=folder)
    model: dict[str, Any] = json.loads(out.stdout)
    return model


async def deploy(backend: SwarmBackend, stacks: StackFactory, text: str, **kwargs: Any) -> tuple[str, list[str]]:
    name = stacks.make(text)
    events = await backend.deploy(name, await model_of(stacks, name), resolve_image="never", **kwargs)
    return name, events


def running_tasks(rows: list[Any]) -> list[Any]:
    return [r for r in rows if r.state == "running"]


async def test_up_runs_two_replicas_as_swarm_tasks_with_no_compose_containers(
    backend: SwarmBackend, swarm_stacks: StackFactory
) -> None:
    name, events = await deploy(backend, swarm_stacks, TWO_REPLICAS, wait=True, progress=None)
    assert f"Creating service {name}_web" in events and events[-1] == "running: web 2/2"

    client = docker.from_env()
    try:
        assert client.containers.list(all=True, filters={"label": f"com.docker.compose.project={name}"}) == []
        assert len(client.containers.list(filters={"label": f"com.docker.stack.namespace={name}"})) == 2
        env = client.services.get(f"{name}_web").attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
    finally:
        client.close()
    # `$$` in the compose file is a literal dollar in the container, not the gateway's HOME.
    assert "LITERAL=${HOME}" in env

    rows = await anyio.to_thread.run_sync(backend.ps, name)
    assert len(rows) == 2 and all(r.service == "web" and r.state == "running" for r in rows)
    assert {r.desired_state for r in rows} == {"running"} and all(r.node for r in rows)
    assert all(r.container and r.container.startswith(f"{name}_web.") for r in rows)
    assert all(r.started_at and r.image == swarm_stacks.image for r in rows)

    async def both_replicas_logged() -> bool:
        logs = await backend.logs(
            name, services=None, tail=20, since=None, grep=None, timestamps=False, max_bytes=64 * 1024
        )
        return "web.1 | tick" in logs.text and "web.2 | tick" in logs.text

    await poll(both_replicas_logged)
    counts = await anyio.to_thread.run_sync(backend.stacks)
    assert counts[name].tasks == 2 and counts[name].running == 2


async def test_restart_replaces_every_task_one_rolling_update_per_service(
    backend: SwarmBackend, swarm_stacks: StackFactory
) -> None:
    name, _ = await deploy(backend, swarm_stacks, TWO_REPLICAS, wait=True)
    before = {r.container for r in await anyio.to_thread.run_sync(backend.ps, name)}
    progress: list[str] = []

    async def record(text: str) -> None:
        progress.append(text)

    events = await backend.restart(name, progress=record)
    assert events == progress and "web: rolling restart" in events and events[-1].startswith("web: ")
    after = await anyio.to_thread.run_sync(backend.ps, name)
    assert len(running_tasks(after)) == 2
    assert before.isdisjoint({r.container for r in after})


async def test_stop_scales_to_zero_and_a_new_gateway_starts_the_replicas_it_had(
    backend: SwarmBackend, swarm_stacks: StackFactory, swarm: str
) -> None:
    name, _ = await deploy(backend, swarm_stacks, TWO_REPLICAS, wait=True)
    await backend.stop(name)
    rows = await anyio.to_thread.run_sync(backend.ps, name)
    assert [(r.service, r.state, r.container) for r in rows] == [("web", "stopped", None)]
    client = docker.from_env()
    try:
        assert client.services.get(f"{name}_web").attrs["Spec"]["Labels"][STOPPED_REPLICAS_LABEL] == "2"
    finally:
        client.close()

    # What `start` gives back lives on the service, not in this process.
    engine = Engine()
    try:
        fresh = SwarmBackend(engine, lambda: DockerCli.locate(None, dict(os.environ)), converge_timeout=120)
        events = await fresh.start(name)
        assert "web: scaled from 0 to 2" in events
        assert len(running_tasks(await anyio.to_thread.run_sync(fresh.ps, name))) == 2
        again = await fresh.start(name)
        assert "web: not stopped by the gateway, left at 2" in again
    finally:
        engine.close()


async def test_down_removes_the_stack_and_returns_once_its_tasks_are_gone(
    backend: SwarmBackend, swarm_stacks: StackFactory
) -> None:
    name, _ = await deploy(backend, swarm_stacks, TWO_REPLICAS, wait=True)
    events = await backend.remove(name)
    assert f"Removing service {name}_web" in events and events[-1].startswith("removing: 0 task(s)")
    client = docker.from_env()
    try:
        label = {"label": f"com.docker.stack.namespace={name}"}
        assert client.services.list(filters=label) == []
        assert client.containers.list(all=True, filters=label) == []
        assert client.networks.list(filters=label) == []
    finally:
        client.close()
    assert name not in await anyio.to_thread.run_sync(backend.stacks)
    assert await anyio.to_thread.run_sync(backend.ps, name) == []


async def test_a_service_that_keeps_failing_is_reported_with_its_error(
    backend: SwarmBackend, swarm_stacks: StackFactory
) -> None:
    with pytest.raises(SwarmFailed, match=r"service 'broken' of swarm stack '\w+' keeps failing .*non-zero exit \(3\)"):
        await deploy(backend, swarm_stacks, FAILING, wait=True)
    name = swarm_stacks.projects[-1]
    rows = await anyio.to_thread.run_sync(backend.ps, name)
    assert rows and all(r.service == "broken" for r in rows)
    assert any(r.error and "non-zero exit (3)" in r.error for r in rows)


async def test_a_port_bound_to_one_address_is_refused_before_anything_is_created(
    backend: SwarmBackend, swarm_stacks: StackFactory
) -> None:
    text = TWO_REPLICAS.replace("    deploy:\n", "    ports: ['127.0.0.1:18099:80']\n    deploy:\n", 1)
    with pytest.raises(InvalidInput, match="Swarm publishes every port on every address"):
        await deploy(backend, swarm_stacks, text)
    assert swarm_stacks.projects[-1] not in await anyio.to_thread.run_sync(backend.stacks)


async def test_stop_refuses_a_global_service_before_changing_anything(
    backend: SwarmBackend, swarm_stacks: StackFactory
) -> None:
    text = TWO_REPLICAS.replace("replicas: 2", "mode: global")
    name, _ = await deploy(backend, swarm_stacks, text, wait=True)
    with pytest.raises(InvalidInput, match="web of swarm stack .* not replicated .global or job."):
        await backend.stop(name)
    assert len(running_tasks(await anyio.to_thread.run_sync(backend.ps, name))) == 1


async def test_unknown_services_are_refused_naming_the_stack_services(
    backend: SwarmBackend, swarm_stacks: StackFactory
) -> None:
    name, _ = await deploy(backend, swarm_stacks, TWO_REPLICAS)
    with pytest.raises(InvalidInput, match="has no service.s. db; its services: web"):
        await backend.restart(name, ["db"])


class _NotInASwarm:
    """An engine whose node left its swarm: only ``GET /info`` is asked."""

    def __init__(self, state: str, control: bool = False) -> None:
        self.state, self.control = state, control

    def get(self, path: str, **filters: str) -> dict[str, Any]:
        assert path == "/info"
        return {"Swarm": {"LocalNodeState": self.state, "ControlAvailable": self.control}}


@pytest.mark.parametrize(
    ("state", "control", "advice"),
    [
        ("inactive", False, "is not part of a swarm: run `docker swarm init` there"),
        ("active", False, "is a swarm worker, not a manager: point the gateway at a manager node"),
        ("locked", False, "unlock it with `docker swarm unlock`"),
    ],
)
def test_a_swarm_stack_on_an_engine_that_is_no_manager_says_how_to_fix_it(
    state: str, control: bool, advice: str, tmp_path: Path
) -> None:
    engine = Engine(f"unix://{tmp_path}/docker.sock")
    backend = SwarmBackend(engine, lambda: DockerCli.locate(None, dict(os.environ)))
    # The message only: no engine leaves its swarm here.
    backend.api._get = _NotInASwarm(state, control).get  # type: ignore[method-assign]
    with pytest.raises(SwarmUnavailable) as caught:
        backend.check_manager("shop")
    assert "stack 'shop' asks for Docker Swarm (x-compose-agent: target: swarm)" in str(caught.value)
    assert advice in str(caught.value)
