"""The audit's guarantees on real gateway processes, real Compose, real signals.

- a mutation whose intent cannot be written does not run;
- a gateway killed (SIGKILL) during an `up` leaves that `up` in the log, and its next start
  gives it an outcome;
- SIGTERM waits a bounded time for a running `up`, then ends its process group, and says so;
- calls refused at the protocol edge (the input schema, read-only mode) are audited.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import anyio
import docker
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import RequestParamsMeta

from gateway.audit import on_behalf_of_meta
from tests.conftest import NEVER_HEALTHY, STACK_FILES, WEB_WORKER, StackFactory
from tests.gateway.conftest import GatewayProcess, start_gateway, stop_process
from tests.polling import eventually_in_thread
from tests.processes import compose_pids, compose_up_pids

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


def _person(name: str) -> RequestParamsMeta:
    """The `_meta` naming the person a call is made for."""
    return cast(RequestParamsMeta, on_behalf_of_meta(name))


INITIALIZE_PARAMS = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}


def audit_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@asynccontextmanager
async def mcp_client(gw: GatewayProcess, token: str | None = None) -> AsyncIterator[Client]:
    headers = gw.headers(token)
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http:
        async with Client(streamable_http_client(gw.url, http_client=http)) as client:
            yield client


async def wait_for_intent(audit: Path, tool: str, project: str) -> dict[str, Any]:
    with anyio.fail_after(30):
        while True:
            for record in audit_records(audit):
                if (record["phase"], record["tool"], record["arguments"].get("project")) == ("intent", tool, project):
                    return record
            await anyio.sleep(0.1)


async def test_with_an_unwritable_audit_log_up_is_refused_and_creates_nothing(
    tmp_path: Path, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    gw = start_gateway(tmp_path, stacks.root, env={"AUDIT_LOG": "/dev/full"})
    try:
        async with mcp_client(gw) as client:
            result = await client.call_tool("up", {"project": project})
        assert result.is_error and (result.meta or {}).get("compose-agent/error") == "audit_unavailable"
        assert "cannot be written" in result.content[0].text  # type: ignore[union-attr]
        label = {"label": f"com.docker.compose.project={project}"}
        assert docker_client.containers.list(all=True, filters=label) == []
        assert docker_client.networks.list(filters=label) == []
        assert "refused up on" in gw.stderr_text()
    finally:
        stop_process(gw.process)


async def test_a_gateway_killed_during_an_up_leaves_that_up_in_the_audit_log(
    tmp_path: Path, stacks: StackFactory
) -> None:
    project = stacks.make(NEVER_HEALTHY)
    audit = tmp_path / "shared-audit.log"
    gw = start_gateway(tmp_path, stacks.root, env={"AUDIT_LOG": str(audit)})
    try:
        async with anyio.create_task_group() as tg:

            async def call_up() -> None:
                async with mcp_client(gw) as client:
                    await client.call_tool("up", {"project": project, "wait": True})

            tg.start_soon(call_up)
            intent = await wait_for_intent(audit, "up", project)
            gw.process.send_signal(signal.SIGKILL)
            gw.process.wait()
            tg.cancel_scope.cancel()
        assert intent["caller"] == "compose_agent_token" and intent["pid"] == gw.process.pid
        assert [r for r in audit_records(audit) if r["id"] == intent["id"]] == [intent]  # no outcome: it was killed

        again = start_gateway(tmp_path, stacks.root, env={"AUDIT_LOG": str(audit)})
        stop_process(again.process)
        (resolved,) = [r for r in audit_records(audit) if r["id"] == intent["id"] and r["phase"] == "outcome"]
        assert resolved["outcome"] == "unknown" and resolved["tool"] == "up" and resolved["recovered"] is True
        assert f"pid {gw.process.pid}" in resolved["error"]
    finally:
        stop_process(gw.process)
        # The Compose child runs in a session of its own and outlives a SIGKILLed gateway: end it.
        for pid in compose_pids(project):
            os.killpg(pid, signal.SIGKILL)


async def test_sigterm_waits_for_a_running_up_then_ends_its_process_group_and_records_it(
    tmp_path: Path, stacks: StackFactory
) -> None:
    project = stacks.make(NEVER_HEALTHY)
    gw = start_gateway(tmp_path, stacks.root, "--shutdown-timeout", "1")
    results: list[Any] = []
    try:
        async with anyio.create_task_group() as tg:

            async def call_up() -> None:
                async with mcp_client(gw) as client:
                    results.append(await client.call_tool("up", {"project": project, "wait": True}))

            tg.start_soon(call_up)
            await wait_for_intent(gw.audit, "up", project)
            # The intent is written before the policy guard and the lock; SIGTERM must find up running.
            await eventually_in_thread(lambda: compose_up_pids(project), what="docker compose up runs")
            gw.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                while gw.process.poll() is None:
                    await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
        assert gw.process.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
        assert compose_pids(project) == []
        (outcome,) = [r for r in audit_records(gw.audit) if r["phase"] == "outcome" and r["tool"] == "up"]
        assert outcome["outcome"] == "interrupted"
        assert "waited 1 s" in outcome["error"] and "process group" in outcome["error"]
        assert "stopping up on" in gw.stderr_text()
    finally:
        stop_process(gw.process)
        for pid in compose_pids(project):
            os.killpg(pid, signal.SIGKILL)


async def test_calls_refused_at_the_protocol_edge_are_audited(tmp_path: Path, stacks: StackFactory) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    gw = start_gateway(tmp_path, stacks.root)
    read_only = start_gateway(tmp_path, stacks.root, "--read-only")
    try:
        async with mcp_client(gw, gw.panel_token) as client:
            long_name = await client.call_tool("ps", {"project": "a" * 64})
            many = await client.call_tool(
                "up",
                {"project": project, "services": [f"s{n}" for n in range(1000)]},
                meta=_person("alice"),
            )
        async with mcp_client(read_only) as client:
            write = await client.call_tool("down", {"project": project})
        assert long_name.is_error and many.is_error and write.is_error

        refusals = [r for r in audit_records(gw.audit) if r["outcome"] == "refused"]
        assert [(r["tool"], r["caller"]) for r in refusals] == [
            ("ps", "status_panel_token"),
            ("up", "status_panel_token"),
        ]
        assert refusals[0]["arguments"]["project"].startswith("a" * 64)
        assert "'project'" in refusals[0]["error"] and "'services'" in refusals[1]["error"]
        assert refusals[1]["arguments"]["services"][-1] == "...(1000 items)"
        assert "on_behalf_of" not in refusals[0] and refusals[1]["on_behalf_of"] == "alice"
        assert not [r for r in audit_records(gw.audit) if r["phase"] == "intent"]  # nothing ran

        (refused_write,) = audit_records(read_only.audit)
        assert (refused_write["tool"], refused_write["outcome"], refused_write["caller"]) == (
            "down",
            "refused",
            "compose_agent_token",
        )
        assert "read-only" in refused_write["error"]
    finally:
        stop_process(gw.process)
        stop_process(read_only.process)


async def test_sigterm_on_stdio_also_stops_a_running_up_and_records_it(tmp_path: Path, stacks: StackFactory) -> None:
    project = stacks.make(NEVER_HEALTHY)
    audit = tmp_path / "stdio-audit.log"
    env = {**os.environ, "AUDIT_LOG": str(audit), "COMPOSE_AGENT_STATE_DIR": str(tmp_path / "state")}
    argv = [sys.executable, "-m", "gateway", "serve", "--transport", "stdio", "--stacks-dir", str(stacks.root)]
    with (tmp_path / "stdio.err").open("wb") as stderr:  # the child keeps its own copy
        process = subprocess.Popen(
            [*argv, "--shutdown-timeout", "1"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
        )
    assert process.stdin is not None and process.stdout is not None
    try:
        messages = [
            {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INITIALIZE_PARAMS},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "up", "arguments": {"project": project, "wait": True}},
            },
        ]
        process.stdin.write(b"".join(json.dumps(m).encode() + b"\n" for m in messages))
        process.stdin.flush()
        await wait_for_intent(audit, "up", project)
        await eventually_in_thread(lambda: compose_up_pids(project), what="docker compose up runs")
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            while process.poll() is None:
                await anyio.sleep(0.1)
        assert compose_pids(project) == []
        (outcome,) = [r for r in audit_records(audit) if r["phase"] == "outcome" and r["tool"] == "up"]
        assert outcome["outcome"] == "interrupted" and outcome["caller"] == "local"
    finally:
        process.kill()
        process.wait()
        process.stdin.close()
        process.stdout.close()
        for pid in compose_pids(project):
            os.killpg(pid, signal.SIGKILL)
