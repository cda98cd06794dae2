"""The gateway on a Docker Engine 29, which refuses every API version below 1.44.

No Engine 29 installs here, so these tests put ``tests/engine29_proxy.py`` in front of the local
engine. It emulates one behaviour of Engine 29 and nothing else: its API version window
(``/_ping`` and ``/version`` report 1.52 with a minimum of 1.44, a path below v1.44 gets the
engine's HTTP 400 "client version ... is too old"), forwarding everything else to the real
engine. The gateway and the Compose CLI it runs both reach the engine through it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import docker
import docker.constants
import docker.errors
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway.engine.client import Engine, negotiate_version
from gateway.errors import EngineUnavailable
from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory
from tests.engine29_proxy import TOO_OLD, Engine29Proxy
from tests.gateway.conftest import start_gateway, stop_process

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

NEWEST_KNOWN = docker.constants.DEFAULT_DOCKER_API_VERSION


def _at_least_1_44(version: str) -> bool:
    major, minor = (int(part) for part in version.split("."))
    return (major, minor) >= (1, 44)


def test_the_emulated_engine_refuses_a_client_pinned_to_1_41(proxy: Engine29Proxy) -> None:
    pinned = docker.APIClient(base_url=proxy.docker_host, version="1.41")
    try:
        with pytest.raises(docker.errors.APIError) as refused:
            pinned.containers()
    finally:
        pinned.close()
    assert refused.value.status_code == 400
    assert refused.value.explanation == TOO_OLD.format(version="1.41")


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ({"ApiVersion": "1.41", "MinAPIVersion": "1.12"}, "1.41"),  # Engine 20.10
        ({"ApiVersion": "1.52", "MinAPIVersion": "1.44"}, NEWEST_KNOWN),  # Engine 29
        ({"ApiVersion": "1.60", "MinAPIVersion": "1.50"}, "1.50"),  # an engine newer than docker-py
        ({"ApiVersion": "1.41"}, "1.41"),  # no minimum reported
    ],
)
def test_the_version_is_the_newest_both_sides_know(server: dict[str, str], expected: str) -> None:
    assert negotiate_version(server, NEWEST_KNOWN) == expected


def test_the_local_engine_is_spoken_to_at_its_own_version() -> None:
    engine = Engine(os.environ.get("DOCKER_HOST"))
    probe = docker.APIClient(base_url=engine.docker_host, version=NEWEST_KNOWN)
    try:
        server = probe.version(api_version=False)
        assert engine.api_version == negotiate_version(server, NEWEST_KNOWN)
        engine.project_containers(None)
    finally:
        probe.close()
        engine.close()


def test_the_version_is_negotiated_once_per_connection(proxy: Engine29Proxy) -> None:
    engine = Engine(proxy.docker_host)
    try:
        for _ in range(20):
            engine.project_containers(None)
        assert engine.api_version == NEWEST_KNOWN and _at_least_1_44(engine.api_version)
    finally:
        engine.close()
    assert proxy.count("/version") == 1
    assert proxy.count("/containers/json") == 20
    assert proxy.refused == []


def test_an_engine_upgraded_under_the_gateway_is_negotiated_again(proxy: Engine29Proxy) -> None:
    proxy.engine29 = False  # the local engine as it is: 1.41
    engine = Engine(proxy.docker_host)
    try:
        engine.project_containers(None)
        assert proxy.count("/version") == 1 and proxy.versions_seen() == {"1.41"}
        proxy.engine29 = True  # upgraded, as with live-restore, without the gateway restarting
        with pytest.raises(EngineUnavailable, match="negotiated again on the next call"):
            engine.project_containers(None)
        engine.project_containers(None)
        assert engine.api_version == NEWEST_KNOWN
    finally:
        engine.close()
    assert proxy.count("/version") == 2
    assert proxy.refused == ["/v1.41/containers/json"]


async def _call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    text = " ".join(getattr(block, "text", "") for block in result.content)
    assert not result.is_error, f"{tool}: {text}"
    return result.structured_content or {}


async def test_every_tool_works_through_engine_29_and_compose_goes_through_it_too(
    proxy: Engine29Proxy, stacks: StackFactory, tmp_path: Path
) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    gateway = start_gateway(tmp_path, stacks.root, env={"DOCKER_HOST": proxy.docker_host})
    try:
        async with httpx2.AsyncClient(headers=gateway.headers()) as http:
            async with streamable_http_client(gateway.url, http_client=http) as (read, write, *_):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    assert project in {s["name"] for s in (await _call(session, "list_stacks"))["stacks"]}
                    await _call(session, "up", project=project, wait=True)
                    services = {s["service"]: s for s in (await _call(session, "ps", project=project))["services"]}
                    assert services["web"]["state"] == "running" and services["web"]["health"] == "healthy"
                    assert services["worker"]["state"] == "running"
                    logs = await _call(session, "logs", project=project, services=["worker"], tail=20, grep="tick")
                    assert logs["text"] and all(line.startswith("worker | tick ") for line in logs["text"].splitlines())
                    worker_started = services["worker"]["started_at"]
                    await _call(session, "restart", project=project, services=["worker"])
                    after = {s["service"]: s for s in (await _call(session, "ps", project=project))["services"]}
                    assert after["worker"]["started_at"] != worker_started
                    await _call(session, "down", project=project)
                    assert (await _call(session, "ps", project=project))["services"][0]["state"] == "missing"
    finally:
        stop_process(gateway.process)
    assert proxy.refused == [], "a client spoke a version Engine 29 refuses"
    assert all(_at_least_1_44(v) for v in proxy.versions_seen()), proxy.versions_seen()
    # The gateway's own reads and the Compose CLI it ran (create, start, restart, remove) all went through.
    assert proxy.count("/containers/create") == 2 and proxy.count("/networks/create") == 1
