"""/health tells the truth, and what fails in the background does not take the server down.

The gateway is a real `compose-agent serve`; its descriptor limit is lowered and raised while it runs
(``prlimit --pid``), and its engine is reached through a proxy that can drop its connections or go
away. The one state no outside act can bring about, the session manager's task group ending, is
injected into an app served in-process by uvicorn.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.backoff import Backoff
from gateway.mcp.app import Limits, build_http_app
from gateway.mcp.edge import ConnectionGuard, EdgeLimits
from gateway.mcp.health import DESCRIPTOR_FLOOR, Vitals, supervise
from gateway.mcp.protocol import edge_protocol
from gateway.mcp.server import build_server
from gateway.operations import ComposeOperations
from tests.conftest import free_port, random_name
from tests.engine29_proxy import engine29_proxy
from tests.gateway.attackers import Flood, open_descriptors
from tests.gateway.conftest import GatewayProcess, start_gateway, stop_process
from tests.polling import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

NOFILE = 20000
LOG_BOUND = 30_000


def add_stack(stacks: Path, prefix: str) -> str:
    """A stack folder the watcher will notice (nothing runs it)."""
    name = random_name(prefix)
    (stacks / name).mkdir()
    (stacks / name / "compose.yaml").write_text("services:\n  idle:\n    image: busybox\n")
    return name


def set_descriptor_limit(pid: int, soft: int) -> None:
    subprocess.run(["prlimit", "--pid", str(pid), f"--nofile={soft}:{NOFILE}"], check=True)


async def health(gw: GatewayProcess) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.get(f"{gw.base}/health")


@asynccontextmanager
async def mcp_client(gw: GatewayProcess) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers=gw.headers(), timeout=30) as http:
        async with Client(streamable_http_client(gw.url, http_client=http)) as client:
            yield client


def served_gateway(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> GatewayProcess:
    stacks = tmp_path / "stacks"
    stacks.mkdir(exist_ok=True)
    return start_gateway(tmp_path, stacks, *args, env=env, prefix=("prlimit", f"--nofile={NOFILE}:{NOFILE}", "--"))


async def test_health_says_503_while_descriptors_are_nearly_exhausted_and_200_once_they_are_free(
    tmp_path: Path,
) -> None:
    gw = served_gateway(tmp_path)
    try:
        assert (await health(gw)).status_code == 200
        # Room for the probe's own connection, and less than the floor /health wants free.
        set_descriptor_limit(gw.process.pid, open_descriptors(gw.process.pid) + DESCRIPTOR_FLOOR // 2)

        async def failing() -> httpx2.Response | None:
            answer = await health(gw)
            return answer if answer.status_code == 503 else None

        answer = await eventually(failing, timeout=20, interval=0.5, what="/health saying 503")
        assert answer is not None and answer.json()["status"] == "failing"
        assert any("file descriptors nearly exhausted" in reason for reason in answer.json()["reasons"])
        set_descriptor_limit(gw.process.pid, NOFILE)

        async def healthy() -> bool:
            return (await health(gw)).status_code == 200

        await eventually(healthy, timeout=20, interval=0.5, what="/health saying 200 again")
    finally:
        stop_process(gw.process)


async def test_running_out_of_descriptors_takes_nothing_down_and_the_log_stays_short(tmp_path: Path) -> None:
    gw = served_gateway(tmp_path)
    stacks = tmp_path / "stacks"
    try:
        async with mcp_client(gw) as client:
            await client.call_tool("list_stacks", {})
        # Below what is open: nothing that needs a descriptor works now (accept(), rescans, engine calls).
        set_descriptor_limit(gw.process.pid, open_descriptors(gw.process.pid) - 4)
        late = add_stack(stacks, "late")
        with Flood("127.0.0.1", int(gw.base.rsplit(":", 1)[1]), 300) as flood:

            async def exhausted() -> bool:
                return "cannot accept connections" in gw.stderr_text() and flood.opened + flood.failed >= 20

            await eventually(exhausted, timeout=30, what="the gateway out of descriptors, under a flood")
        set_descriptor_limit(gw.process.pid, NOFILE)

        async def healthy() -> bool:
            try:
                return (await health(gw)).status_code == 200
            except httpx2.HTTPError:
                return False

        await eventually(healthy, timeout=30, interval=0.5, what="/health saying 200 once descriptors are back")
        # The sessions' task group is whole: MCP works, and the watcher saw the stack added meanwhile.
        async with mcp_client(gw) as client:
            result = await client.call_tool("list_stacks", {})
            assert not result.is_error

        async def watcher_alive() -> bool:
            return f"stacks changed: +{late}" in gw.stderr_text()

        await eventually(watcher_alive, timeout=30, what="the stack watcher noticing the new stack")
    finally:
        stop_process(gw.process)
    log = gw.stderr_text()
    assert len(log) < LOG_BOUND, log[-3000:]
    assert "Exception in ASGI application" not in log
    # Each failed accept() counted, the count said once: no traceback per failure.
    assert log.count("cannot accept connections (") <= 3 and "out of system resource" not in log


async def test_health_says_503_once_the_engine_has_been_unreachable_longer_than_its_bound(tmp_path: Path) -> None:
    with engine29_proxy() as proxy:
        proxy.engine29 = False
        gw = served_gateway(tmp_path, "--engine-down-timeout", "3", env={"DOCKER_HOST": proxy.docker_host})
    try:
        # The proxy is gone: the engine does not answer. First degraded, then, past the bound, failing.
        async def engine_down() -> httpx2.Response | None:
            answer = await health(gw)
            return answer if answer.json()["engine"] == "down" else None

        first = await eventually(engine_down, timeout=20, interval=0.2, what="/health seeing the engine down")
        assert first is not None and first.status_code == 200 and first.json()["status"] == "degraded"

        async def failing() -> httpx2.Response | None:
            answer = await health(gw)
            return answer if answer.status_code == 503 else None

        answer = await eventually(failing, timeout=20, interval=0.5, what="/health saying 503")
        assert answer is not None
        assert any("Docker engine has not answered" in reason for reason in answer.json()["reasons"])
    finally:
        stop_process(gw.process)


async def test_an_engine_that_keeps_dropping_the_event_stream_leaves_the_server_serving(tmp_path: Path) -> None:
    with engine29_proxy() as proxy:
        proxy.engine29 = False
        gw = served_gateway(tmp_path, env={"DOCKER_HOST": proxy.docker_host})
        try:

            async def streams_opened() -> bool:
                return proxy.count("/events") >= 1

            await eventually(streams_opened, what="the watcher opening the event stream")
            async with mcp_client(gw) as client:
                for _ in range(15):
                    await anyio.to_thread.run_sync(proxy.drop_connections)
                    result = await client.call_tool("list_stacks", {})
                    assert not result.is_error, result
                    await anyio.sleep(0.2)
            assert (await health(gw)).json()["status"] == "ok"
            # The watcher still runs: it sees a stack folder added after all that.
            name = add_stack(tmp_path / "stacks", "after")

            async def watcher_alive() -> bool:
                return f"stacks changed: +{name}" in gw.stderr_text()

            await eventually(watcher_alive, timeout=30, what="the stack watcher noticing the new stack")
        finally:
            stop_process(gw.process)
    assert proxy.count("/events") >= 2  # it reconnected
    assert "Exception in ASGI application" not in gw.stderr_text()


async def test_health_says_503_when_the_session_managers_task_group_is_gone(ops: ComposeOperations) -> None:
    mcp = build_server(ops)
    die = anyio.Event()
    app = build_http_app(mcp, ops, limits=Limits(identify=lambda token: None), vitals=Vitals(ops.engine.ping))
    manager = mcp.session_manager
    real_run = manager.run

    @asynccontextmanager
    async def run_then_die() -> AsyncIterator[None]:
        async def fail() -> None:
            await die.wait()
            raise RuntimeError("the session manager's task group failed (injected)")

        async with real_run(), anyio.create_task_group() as tg:
            tg.start_soon(fail)
            yield

    manager.run = run_then_die  # type: ignore[method-assign]
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            port=port,
            log_config=None,
            lifespan="on",
            http=edge_protocol(ConnectionGuard(EdgeLimits())),
        )
    )
    base = f"http://127.0.0.1:{port}"
    async with anyio.create_task_group() as tg, httpx2.AsyncClient(timeout=10) as http:
        tg.start_soon(server.serve)

        async def started() -> bool:
            return server.started

        await eventually(started, what="the in-process server started")
        assert (await http.get(f"{base}/health")).status_code == 200
        die.set()

        async def failing() -> httpx2.Response | None:
            answer = await http.get(f"{base}/health")
            return answer if answer.status_code == 503 else None

        answer = await eventually(failing, what="/health saying 503")
        assert answer is not None
        assert "the MCP session manager is not running" in answer.json()["reasons"][0]
        # /health is honest: an MCP client is failed now too.
        request = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        mcp_answer = await http.post(
            f"{base}/mcp",
            content=json.dumps(request),
            headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
        )
        assert mcp_answer.status_code >= 500
        server.should_exit = True


async def test_a_supervised_task_that_keeps_failing_is_started_again_and_never_raises() -> None:
    runs = 0
    settled = anyio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise OSError(24, "Too many open files")
        settled.set()
        await anyio.sleep_forever()

    vitals = Vitals(lambda: None)
    vitals.sessions_running = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: supervise("flaky task", flaky, vitals, backoff=Backoff(0.01, 0.05)))
        with anyio.fail_after(10):
            await settled.wait()
        report = await vitals.report()
        tg.cancel_scope.cancel()
    assert runs == 4
    assert report.status_code == 200 and report.body["status"] == "degraded"
    assert any(reason.startswith("flaky task failed (3 in a row") for reason in report.body["reasons"])
