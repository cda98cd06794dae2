"""The gateway as a real process: stdio, Streamable HTTP and SSE, with real clients.

The acceptance path is driven by the MCP Inspector CLI, an independent client, on all three
transports: list the tools, bring up a stack the tests never saw, see each service running with
its health, read and grep its logs, restart one service, bring it down keeping its named volume.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import docker
import httpx2
import pytest
from mcp import Client, ClientSession, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from gateway.errors import ERROR_META_KEY
from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory
from tests.gateway.conftest import GatewayProcess, inspector_path, start_gateway, stop_process

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


def http_status(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None
) -> int:
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code


class Inspector:
    """Runs the MCP Inspector CLI against one target and returns its JSON answers."""

    def __init__(self, target: list[str], tmp_path: Path, command: list[str] | None = None) -> None:
        self.target = target
        self.command = ["--", *command] if command else []
        self.env = {**os.environ, "MCP_CATALOG_PATH": str(tmp_path / "inspector-catalog.json")}

    def __call__(self, method: str, tool: str | None = None, **args: Any) -> dict[str, Any]:
        argv = [inspector_path(), "--cli", *self.target, "--method", method]
        if tool:
            argv += ["--tool-name", tool]
        for key, value in args.items():
            argv += ["--tool-arg", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
        argv += self.command
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=self.env)
        assert done.returncode == 0, f"inspector failed: {done.stderr[-2000:]}"
        result: dict[str, Any] = json.loads(done.stdout)
        return result


def acceptance_walk(call: Inspector, project: str, docker_client: docker.DockerClient) -> None:
    tools = {t["name"] for t in call("tools/list")["tools"]}
    assert tools == {
        *("list_stacks", "ps", "logs", "config", "plan", "versions"),
        *("up", "down", "restart", "start", "stop", "deploy", "rollback"),
        *("approve", "reject"),
    }
    listed = call("tools/call", "list_stacks")["structuredContent"]["stacks"]
    assert project in {s["name"] for s in listed}

    up = call("tools/call", "up", project=project, wait=True)
    assert not up.get("isError"), up
    services = {s["service"]: s for s in call("tools/call", "ps", project=project)["structuredContent"]["services"]}
    assert services["web"]["state"] == "running" and services["web"]["health"] == "healthy"
    assert services["worker"]["state"] == "running"

    logs = call("tools/call", "logs", project=project, services=["worker"], tail=100, grep="tick [0-9]+$")
    text = logs["structuredContent"]["text"]
    assert text and all(line.startswith("worker | tick ") for line in text.splitlines())

    before = docker_client.containers.get(f"{project}-worker-1").attrs["State"]["StartedAt"]
    web_before = docker_client.containers.get(f"{project}-web-1").attrs["State"]["StartedAt"]
    assert not call("tools/call", "restart", project=project, services=["worker"]).get("isError")
    assert docker_client.containers.get(f"{project}-worker-1").attrs["State"]["StartedAt"] != before
    assert docker_client.containers.get(f"{project}-web-1").attrs["State"]["StartedAt"] == web_before

    assert not call("tools/call", "down", project=project).get("isError")
    assert docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={project}"}) == []
    assert docker_client.volumes.get(f"{project}_data")  # the named volume is kept


def test_inspector_drives_a_stack_over_stdio(
    stacks: StackFactory, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    env = ["-e", f"COMPOSE_AGENT_STATE_DIR={tmp_path / 'state'}", "-e", f"PATH={os.environ['PATH']}"]
    command = [sys.executable, "-m", "gateway", "serve", "--transport", "stdio", "--stacks-dir", str(stacks.root)]
    call = Inspector(env, tmp_path, command)
    acceptance_walk(call, project, docker_client)


def test_inspector_drives_a_stack_over_streamable_http(
    gateway: GatewayProcess, stacks: StackFactory, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    auth = ["--header", f"Authorization: Bearer {gateway.agent_token}"]
    acceptance_walk(Inspector([gateway.url, "--transport", "http", *auth], tmp_path), project, docker_client)
    assert_audit_has_mutations_and_no_token(gateway, project)


def test_inspector_drives_a_stack_over_sse(
    gateway: GatewayProcess, stacks: StackFactory, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    auth = ["--header", f"Authorization: Bearer {gateway.agent_token}"]
    acceptance_walk(Inspector([f"{gateway.base}/sse", "--transport", "sse", *auth], tmp_path), project, docker_client)


def assert_audit_has_mutations_and_no_token(gateway: GatewayProcess, project: str) -> None:
    text = gateway.audit.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    outcomes = [r for r in records if r["phase"] == "outcome"]
    assert [(r["tool"], r["outcome"]) for r in outcomes if r["arguments"].get("project") == project] == [
        ("up", "ok"),
        ("restart", "ok"),
        ("down", "ok"),
    ]
    assert all(r["caller"] == "compose_agent_token" for r in records)
    for secret in (gateway.agent_token, gateway.panel_token):
        assert secret not in text
        assert secret not in gateway.stderr_text()


async def test_wrong_or_missing_tokens_get_401_on_every_mcp_route(gateway: GatewayProcess) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    post = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {gateway.agent_token}x"}):
        assert http_status(gateway.url, method="POST", headers={**post, **headers}, body=body) == 401
        assert http_status(f"{gateway.base}/sse", headers=headers) == 401
        assert http_status(f"{gateway.base}/messages/?session_id=x", method="POST", headers=headers, body=body) == 401
    # The open routes stay open.
    assert http_status(f"{gateway.base}/health") == 200
    assert http_status(f"{gateway.base}/api/v1/metrics") == 200
    assert http_status(f"{gateway.base}/metrics") == 200


async def test_a_foreign_host_header_is_refused(gateway: GatewayProcess) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    headers = {
        **gateway.headers(),
        "Host": "evil.example",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    assert http_status(gateway.url, method="POST", headers=headers, body=body) == 421


async def test_the_panel_token_works_within_its_scope_only(gateway: GatewayProcess, stacks: StackFactory) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    async with httpx2.AsyncClient(headers=gateway.headers(gateway.panel_token)) as http:
        async with streamable_http_client(gateway.url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                assert not (await session.call_tool("list_stacks", {})).is_error
                assert not (await session.call_tool("ps", {"project": project})).is_error
                refused = await session.call_tool("config", {"project": project})
    assert refused.is_error and "may not call 'config'" in refused.content[0].text  # type: ignore[union-attr]
    assert refused.structured_content is None and (refused.meta or {}).get(ERROR_META_KEY) == "policy_violation"
    refusal = [json.loads(line) for line in gateway.audit.read_text().splitlines()][-1]
    assert (refusal["caller"], refusal["tool"], refusal["outcome"]) == ("status_panel_token", "config", "refused")


async def test_executions_are_counted_as_compose_agent_in_metrics(
    gateway: GatewayProcess, stacks: StackFactory
) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    async with httpx2.AsyncClient(headers=gateway.headers()) as http:
        async with streamable_http_client(gateway.url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                await session.call_tool("ps", {"project": project})
                await session.call_tool("up", {"project": project})
        metrics = (await http.get(f"{gateway.base}/api/v1/metrics")).json()
        prometheus = (await http.get(f"{gateway.base}/metrics")).text
    assert metrics["compose_agent_count"] == 2 and metrics["status_panel_count"] == 0
    assert metrics["total_count"] == 2 and metrics["success_count"] == 2
    assert metrics["last_control_plane"] == "compose_agent" and metrics["last_command_timestamp_ms"] > 0
    assert 'compose_agent_commands_total{control_plane="compose_agent"} 2' in prometheus


async def test_sdk_client_over_stdio_lists_and_reads(stacks: StackFactory, tmp_path: Path) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "gateway", "serve", "--transport", "stdio", "--stacks-dir", str(stacks.root)],
        env={**os.environ, "COMPOSE_AGENT_STATE_DIR": str(tmp_path / "state")},
    )
    async with Client(params) as client:
        listed = await client.call_tool("list_stacks", {})
        ps = await client.call_tool("ps", {"project": project})
    assert project in {s["name"] for s in listed.structured_content["stacks"]}
    assert {s["state"] for s in ps.structured_content["services"]} == {"missing"}


async def test_sdk_client_over_sse(gateway: GatewayProcess) -> None:
    async with sse_client(f"{gateway.base}/sse", headers=gateway.headers()) as (read, write, *_):
        async with ClientSession(read, write) as session:
            await session.initialize()
            assert not (await session.call_tool("list_stacks", {})).is_error


def test_repeated_bad_tokens_get_429_with_retry_after(gateway: GatewayProcess) -> None:
    headers = {"Authorization": "Bearer guess", "Content-Type": "application/json"}
    statuses = [http_status(gateway.url, method="POST", headers=headers, body=b"{}") for _ in range(32)]
    assert statuses[:30] == [401] * 30 and statuses[-1] == 429
    request = urllib.request.Request(gateway.url, method="POST", headers=headers, data=b"{}")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    with refused.value:
        assert refused.value.code == 429 and int(refused.value.headers["Retry-After"]) > 0


def test_non_loopback_bind_keeps_host_checking(tmp_path: Path, stacks: StackFactory) -> None:
    proc = start_gateway(
        tmp_path, stacks.root, "--host", "0.0.0.0", env={"COMPOSE_AGENT_ALLOWED_HOSTS": "gw.internal:*"}
    )
    try:
        port = proc.base.rsplit(":", 1)[1]
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
        post = {**proc.headers(), "Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        assert http_status(proc.url, method="POST", headers={**post, "Host": "evil.example"}, body=body) == 421
        assert http_status(proc.url, method="POST", headers={**post, "Host": f"gw.internal:{port}"}, body=body) != 421
    finally:
        stop_process(proc.process)
