"""Listings kept between polls while the engine's event stream is followed, and what ends them.

The engine side (counting its requests through a pass-through proxy) and the whole loop: a
:class:`~gateway.mcp.watch.StackWatcher` following the real engine's events, a change made behind the
gateway's back, and a dropped event stream.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import docker
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.subscriptions import InMemorySubscriptionBus

from gateway.config import load_settings
from gateway.engine import client as engine_module
from gateway.engine.client import Engine
from gateway.engine.containers import PROJECT_LABEL, SERVICE_LABEL
from gateway.mcp import watch as watch_module
from gateway.mcp.notify import Notifier
from gateway.mcp.watch import StackWatcher
from gateway.metrics import ControlPlane
from gateway.operations import ComposeOperations
from tests.conftest import random_name
from tests.engine29_proxy import Engine29Proxy, engine29_proxy
from tests.gateway.conftest import start_gateway, stop_process

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

LISTED = "/containers/json"


@pytest.fixture
def counting() -> Iterator[Engine29Proxy]:
    """The local engine as it is, behind a proxy that counts what it is asked."""
    with engine29_proxy(os.environ.get("DOCKER_HOST")) as proxy:
        proxy.engine29 = False
        yield proxy


@pytest.fixture
def project(docker_client: docker.DockerClient, busybox_image: str) -> Iterator[str]:
    """A one-container compose project made without Compose: a running container with its labels."""
    name = random_name("kl")
    container = docker_client.containers.run(
        busybox_image,
        ["sleep", "600"],
        name=f"{name}-app-1",
        labels={PROJECT_LABEL: name, SERVICE_LABEL: "app"},
        detach=True,
    )
    try:
        yield name
    finally:
        container.remove(force=True)


@pytest.fixture
def engine(counting: Engine29Proxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    # Kept listings do not age out on a slow machine while a test counts; the age has its own test.
    monkeypatch.setattr(engine_module, "LISTING_MAX_AGE_S", 600)
    engine = Engine(counting.docker_host)
    yield engine
    engine.close()


async def _listings(engine: Engine, project: str, times: int) -> None:
    for _ in range(times):
        assert [c["Labels"][PROJECT_LABEL] for c in await engine.project_containers_async(project)] == [project]


async def test_without_the_event_stream_every_listing_asks_the_engine(
    engine: Engine, counting: Engine29Proxy, project: str
) -> None:
    await _listings(engine, project, 3)
    assert counting.count(LISTED) == 3


async def test_a_kept_listing_answers_until_an_event_the_gateway_or_the_stream_ends_it(
    engine: Engine, counting: Engine29Proxy, project: str
) -> None:
    engine.events_followed(True)
    await _listings(engine, project, 3)
    assert counting.count(LISTED) == 1

    engine.container_changed(random_name("other"))  # another project's event leaves this one be
    await _listings(engine, project, 2)
    assert counting.count(LISTED) == 1

    engine.container_changed(project)
    await _listings(engine, project, 2)
    assert counting.count(LISTED) == 2

    engine.forget_start_times()  # what every lifecycle action of the gateway calls
    await _listings(engine, project, 2)
    assert counting.count(LISTED) == 3

    engine.events_followed(False)
    await _listings(engine, project, 2)
    assert counting.count(LISTED) == 5

    engine.events_followed(True)  # a stream opened anew keeps nothing from before
    await _listings(engine, project, 2)
    assert counting.count(LISTED) == 6


async def test_a_kept_listing_is_asked_again_after_its_maximum_age(
    engine: Engine, counting: Engine29Proxy, project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.events_followed(True)
    await _listings(engine, project, 2)
    assert counting.count(LISTED) == 1
    monkeypatch.setattr(engine_module, "LISTING_MAX_AGE_S", 0.0)  # the kept one is now too old
    await _listings(engine, project, 1)
    assert counting.count(LISTED) == 2
    monkeypatch.setattr(engine_module, "LISTING_MAX_AGE_S", 600)  # and the new one is kept in turn
    await _listings(engine, project, 2)
    assert counting.count(LISTED) == 2


async def test_a_listing_asked_while_an_event_arrived_is_not_kept(
    engine: Engine, counting: Engine29Proxy, project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.events_followed(True)
    read = engine._read_json

    async def event_meanwhile(*args: Any, **kwargs: Any) -> Any:
        # The engine may have listed before the change this event reports: the answer is used, not kept.
        engine.container_changed(project)
        return await read(*args, **kwargs)

    monkeypatch.setattr(engine, "_read_json", event_meanwhile)
    await _listings(engine, project, 1)
    monkeypatch.setattr(engine, "_read_json", read)
    await _listings(engine, project, 3)
    assert counting.count(LISTED) == 2


async def test_a_start_event_makes_the_next_start_time_an_inspect(
    engine: Engine, counting: Engine29Proxy, project: str
) -> None:
    engine.events_followed(True)
    (container,) = await engine.project_containers_async(project)
    inspected = f"/containers/{container['Id']}/json"
    started = await engine.started_at_async(container)
    assert started is not None
    assert await engine.started_at_async(container) == started
    engine.container_changed(project, container["Id"], "die")  # no new start: the time stands
    assert await engine.started_at_async(container) == started
    assert counting.count(inspected) == 1
    engine.container_changed(project, container["Id"], "start")
    assert await engine.started_at_async(container) == started  # asked again; the same container, not restarted
    assert counting.count(inspected) == 2


@pytest.fixture
async def watched(counting: Engine29Proxy, tmp_path: Path) -> AsyncIterator[tuple[ComposeOperations, StackWatcher]]:
    """Operations on the counted engine, with a stack watcher following its events.

    Ask for it after ``project``: the events of a container created while it watches would end
    the listings a test expects kept.
    """
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    settings = load_settings(
        {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")},
        stacks_dir=stacks,
        docker_host=counting.docker_host,
    )
    ops = ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, environ=dict(os.environ))
    watcher = StackWatcher(ops, Notifier(InMemorySubscriptionBus()), rescan_interval=60)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.run)
            await _until(watcher.connected.is_set)
            yield ops, watcher
            tg.cancel_scope.cancel()
    finally:
        ops.close()


def _listed(counting: Engine29Proxy, project: str) -> int:
    """Listings of ``project`` the engine was asked for (the watcher also lists every project now and then)."""
    return counting.count(LISTED, query_has=f"{PROJECT_LABEL}={project}")


async def _until(condition: Any, timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


async def test_ps_shows_a_change_made_behind_the_gateways_back_as_soon_as_its_event_arrives(
    project: str,
    watched: tuple[ComposeOperations, StackWatcher],
    counting: Engine29Proxy,
    docker_client: docker.DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Kept listings do not age out during this test: only the event can end the one kept.
    monkeypatch.setattr(engine_module, "LISTING_MAX_AGE_S", 600)
    ops, _ = watched
    for _ in range(5):
        assert [s.state for s in (await ops.ps(project)).services] == ["running"]
    assert _listed(counting, project) == 1

    await anyio.to_thread.run_sync(lambda: docker_client.containers.get(f"{project}-app-1").stop(timeout=0))

    async def exited() -> bool:
        return [s.state for s in (await ops.ps(project)).services] == ["exited"]

    with anyio.fail_after(5):
        while not await exited():
            await anyio.sleep(0.01)
    # The new state is kept in turn, once the stop's last events (kill, die, stop) are in.
    await anyio.sleep(0.5)
    listed = _listed(counting, project)
    for _ in range(3):
        assert await exited()
    assert _listed(counting, project) - listed <= 1


async def test_a_dropped_event_stream_stops_kept_listings_until_it_is_followed_again(
    project: str,
    watched: tuple[ComposeOperations, StackWatcher],
    counting: Engine29Proxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_module, "LISTING_MAX_AGE_S", 600)
    monkeypatch.setattr(watch_module, "_RECONNECT_DELAY_S", 3.0)  # time enough to look in between
    ops, watcher = watched
    await ops.ps(project)
    await ops.ps(project)
    assert _listed(counting, project) == 1

    # Every connection to the engine ends, the event stream's too; the watcher reconnects 3 s later.
    await anyio.to_thread.run_sync(counting.drop_connections)
    await _until(lambda: not watcher.connected.is_set(), timeout=5)
    await ops.ps(project)
    await ops.ps(project)
    assert _listed(counting, project) == 3
    assert not watcher.connected.is_set(), "reconnected too early for this test to tell"

    await _until(watcher.connected.is_set)
    for _ in range(3):
        await ops.ps(project)
    assert _listed(counting, project) == 4


async def test_the_served_gateway_keeps_listings_and_still_shows_a_change_made_behind_its_back(
    project: str, counting: Engine29Proxy, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    gateway = start_gateway(tmp_path, stacks, env={"DOCKER_HOST": counting.docker_host})
    try:
        async with httpx2.AsyncClient(headers=gateway.headers(None), timeout=30) as http:
            async with Client(streamable_http_client(gateway.url, http_client=http)) as client:

                async def states() -> list[str]:
                    result = await client.call_tool("ps", {"project": project})
                    assert not result.is_error, result.content
                    return [s["state"] for s in (result.structured_content or {})["services"]]

                # The gateway follows the engine's events from its start; wait until it does.
                with anyio.fail_after(10):
                    while counting.count("/events") == 0:
                        await anyio.sleep(0.05)
                await anyio.sleep(0.2)
                listed, began = _listed(counting, project), time.monotonic()
                for _ in range(10):
                    assert await states() == ["running"]
                # One listing a second at most (ten calls take far less on a quiet machine).
                assert _listed(counting, project) - listed <= 1 + int(time.monotonic() - began)

                await anyio.to_thread.run_sync(lambda: docker_client.containers.get(f"{project}-app-1").kill())
                with anyio.fail_after(5):
                    while await states() != ["exited"]:
                        await anyio.sleep(0.01)
    finally:
        stop_process(gateway.process)
