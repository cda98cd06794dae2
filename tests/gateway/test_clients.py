"""The clients people run: the MCP Inspector on every error path, the 1.x Python SDK, every protocol revision.

- The MCP Inspector CLI (a TypeScript-SDK client, as inside Claude Desktop, Claude Code, Cursor and
  VS Code) validates ``structuredContent`` against the tool's output schema even in an error
  result. So each failure must reach it as ``isError: true`` with the gateway's own message as
  text, on stdio, SSE and Streamable HTTP: an unknown stack, a refused name, a malformed compose
  file and (with a token: not on stdio, where the caller is the local user) a call outside the
  token's scope.
- The 1.x Python SDK client, still inside most deployed agents, from a virtual environment of its
  own with ``mcp<2`` (made once, cached under ~/.cache/compose-agent/mcp1-venv).
- ``initialize`` in the oldest and the newest revision the gateway serves by handshake, and the
  newest stateless revision through ``server/discover``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from gateway.errors import ERROR_META_KEY
from tests.conftest import StackFactory
from tests.gateway.conftest import GatewayProcess, inspector_path, start_gateway, stop_process

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

MCP1_REQUIREMENT = "mcp<2"
PROBE = Path(__file__).with_name("mcp1_probe.py")
SMALL = """
services:
  web:
    image: {image}
    init: true
    command: ["sleep", "3600"]
"""
BROKEN = "services:\n  web: [unclosed\n"


@dataclass
class Gateways:
    """Two real gateways over one stacks dir (a good stack, a broken one): full and ``--read-only``."""

    stacks: StackFactory
    good: str
    broken: str
    full: GatewayProcess
    read_only: GatewayProcess
    state: Path


@pytest.fixture
def gateways(stacks: StackFactory, tmp_path: Path) -> Iterator[Gateways]:
    good = stacks.make(SMALL)
    broken = stacks.make(BROKEN)
    full = start_gateway(tmp_path, stacks.root)
    try:
        read_only = start_gateway(tmp_path, stacks.root, "--read-only")
    except BaseException:
        stop_process(full.process)
        raise
    try:
        yield Gateways(stacks, good, broken, full, read_only, tmp_path / "stdio-state")
    finally:
        stop_process(full.process)
        stop_process(read_only.process)


@dataclass
class Target:
    """Where the Inspector connects: flags before its own, and (stdio) the server command after ``--``."""

    flags: list[str]
    command: list[str]

    def run(self, tmp_path: Path, method: str, tool: str | None = None, **args: str) -> dict[str, Any]:
        """One Inspector CLI run; its JSON answer, whatever its exit code (an error result exits non-zero)."""
        argv = [inspector_path(), "--cli", *self.flags, "--method", method]
        if tool:
            argv += ["--tool-name", tool]
        for key, value in args.items():
            argv += ["--tool-arg", f"{key}={value}"]
        if self.command:
            argv += ["--", *self.command]
        env = {**os.environ, "MCP_CATALOG_PATH": str(tmp_path / "inspector-catalog.json")}
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
        # The answer is on stdout; a refusal by the Inspector itself (no such tool) is on stderr.
        for stream in (done.stdout, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""):
            try:
                answer: dict[str, Any] = json.loads(stream)
                return answer
            except json.JSONDecodeError:
                continue
        pytest.fail(
            f"the Inspector printed no JSON (exit {done.returncode}): {done.stdout[-500:]} {done.stderr[-2000:]}"
        )


def target(transport: str, gateways: Gateways, token: str, *, read_only: bool = False) -> Target:
    gw = gateways.read_only if read_only else gateways.full
    if transport == "stdio":
        env = ["-e", f"COMPOSE_AGENT_STATE_DIR={gateways.state}", "-e", f"PATH={os.environ['PATH']}"]
        command = [sys.executable, "-m", "gateway", "serve", "--transport", "stdio"]
        command += ["--stacks-dir", str(gateways.stacks.root), *(["--read-only"] if read_only else [])]
        return Target(env, command)
    url = gw.url if transport == "http" else f"{gw.base}/sse"
    return Target([url, "--transport", transport, "--header", f"Authorization: Bearer {token}"], [])


def assert_error_result(answer: dict[str, Any], kind: str, *fragments: str) -> None:
    """An error result as every client can read it: text with the gateway's message, no structured content."""
    assert answer.get("isError") is True, answer
    assert "structuredContent" not in answer, answer
    text = " ".join(block.get("text", "") for block in answer["content"])
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    assert answer["_meta"][ERROR_META_KEY] == kind, answer


@pytest.mark.parametrize("transport", ["stdio", "http", "sse"])
def test_every_failure_reaches_the_inspector_as_an_error_result_with_the_gateways_message(
    transport: str, gateways: Gateways, tmp_path: Path
) -> None:
    agent = target(transport, gateways, gateways.full.agent_token)
    assert_error_result(
        agent.run(tmp_path, "tools/call", "ps", project="no-such-stack"),
        "stack_not_found",
        "stack 'no-such-stack' not found; known stacks:",
    )
    assert_error_result(
        agent.run(tmp_path, "tools/call", "ps", project="../etc"), "invalid_input", "invalid stack name '../etc'"
    )
    assert_error_result(
        agent.run(tmp_path, "tools/call", "config", project=gateways.broken),
        "compose_failed",
        # Found by the guard's strict reading, before Compose runs: the same kind as Compose's own error.
        "compose.yaml is not valid YAML",
    )
    if transport != "stdio":  # stdio has no token: its caller is the local user who started it
        panel = target(transport, gateways, gateways.full.panel_token)
        assert_error_result(
            panel.run(tmp_path, "tools/call", "config", project=gateways.good),
            "policy_violation",
            "may not call 'config'",
        )


@pytest.mark.parametrize("transport", ["stdio", "http", "sse"])
async def test_a_write_in_read_only_mode_is_refused_with_the_gateways_message(
    transport: str, gateways: Gateways, tmp_path: Path
) -> None:
    where = target(transport, gateways, gateways.read_only.agent_token, read_only=True)
    offered = {tool["name"] for tool in where.run(tmp_path, "tools/list")["tools"]}
    assert "down" not in offered and "ps" in offered
    # The Inspector calls only tools the server lists, and refuses this one itself.
    refused = where.run(tmp_path, "tools/call", "down", project=gateways.good)
    assert refused["error"]["code"] == "tool_not_found", refused
    if transport == "http":
        # A client that calls it anyway gets the gateway's own answer, not the SDK's "Unknown tool".
        headers = gateways.read_only.headers()
        async with httpx2.AsyncClient(headers=headers) as http:
            async with Client(streamable_http_client(gateways.read_only.url, http_client=http)) as client:
                result = await client.call_tool("down", {"project": gateways.good})
        assert result.is_error and result.structured_content is None
        assert "this gateway runs in --read-only mode" in " ".join(getattr(b, "text", "") for b in result.content)
        assert result.meta is not None and result.meta[ERROR_META_KEY] == "policy_violation"


# --- the 1.x Python SDK client ------------------------------------------------------------------


@pytest.fixture(scope="session")
def mcp1_python() -> Path:
    """The Python of a virtual environment with ``mcp<2``: made on first use, then reused from the cache."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compose-agent"
    venv = cache / "mcp1-venv"
    python = venv / "bin" / "python"
    ready = venv / "ready"
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "mcp1-venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs wait for one maker, then share its result
        if not ready.exists() or ready.read_text() != MCP1_REQUIREMENT:
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
            install = [str(python), "-m", "pip", "install", "-q", MCP1_REQUIREMENT]
            done = subprocess.run(install, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                pytest.fail(f"cannot install {MCP1_REQUIREMENT} for the 1.x client tests: {done.stderr[-2000:]}")
            ready.write_text(MCP1_REQUIREMENT)
    return python


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_the_1x_python_client_lists_tools_calls_one_and_reads_an_error_result(
    transport: str, mcp1_python: Path, gateway: GatewayProcess, stacks: StackFactory
) -> None:
    project = stacks.make(SMALL)
    url = gateway.url if transport == "http" else f"{gateway.base}/sse"
    probe = [str(mcp1_python), str(PROBE), transport, url, gateway.agent_token, project]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=120, cwd=PROBE.parent.parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout)
    assert seen["sdk"].split(".")[0] == "1" and seen["server"] == "compose-agent"
    assert seen["protocol_version"] in HANDSHAKE_PROTOCOL_VERSIONS
    assert {"list_stacks", "ps", "logs", "config", "up", "down", "restart"} <= set(seen["tools"])
    # A result the 1.x client validated against the tool's output schema.
    assert seen["ps"]["is_error"] is False
    assert seen["ps"]["structured"]["project"] == project
    assert [s["state"] for s in seen["ps"]["structured"]["services"]] == ["missing"]
    error = seen["error"]
    assert error["is_error"] is True and error["structured"] is None
    assert "stack 'no-such-stack' not found; known stacks:" in error["text"]
    assert error["meta"][ERROR_META_KEY] == "stack_not_found"


# --- protocol revisions --------------------------------------------------------------------------


async def _post(gateway: GatewayProcess, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    """One JSON-RPC request over Streamable HTTP, by hand: the answer, from JSON or from its SSE event."""
    send = {**gateway.headers(), "Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(headers={**send, **headers}, timeout=30) as http:
        response = await http.post(gateway.url, json=body)
    assert response.status_code == 200, response.text
    text = response.text
    if "text/event-stream" in response.headers.get("content-type", ""):
        text = next(line[len("data:") :] for line in text.splitlines() if line.startswith("data:"))
    answer: dict[str, Any] = json.loads(text)
    return answer


def _initialize(version: str) -> dict[str, Any]:
    client = {"name": "revision-check", "version": "1"}
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": client}
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}


@pytest.mark.parametrize(
    "version", [HANDSHAKE_PROTOCOL_VERSIONS[0], HANDSHAKE_PROTOCOL_VERSIONS[-1]], ids=["oldest", "newest"]
)
async def test_initialize_is_answered_in_the_revision_asked_for(version: str, gateway: GatewayProcess) -> None:
    answer = await _post(gateway, _initialize(version))
    assert answer["result"]["protocolVersion"] == version
    assert answer["result"]["serverInfo"]["name"] == "compose-agent"
    assert "tools" in answer["result"]["capabilities"]


async def test_an_unknown_revision_is_offered_the_newest_handshake_revision(gateway: GatewayProcess) -> None:
    answer = await _post(gateway, _initialize("2024-01-01"))
    assert answer["result"]["protocolVersion"] == HANDSHAKE_PROTOCOL_VERSIONS[-1]


async def test_the_stateless_revision_is_negotiated_through_server_discover(gateway: GatewayProcess) -> None:
    # The 2.x client probes server/discover first and speaks the newest stateless revision when offered.
    async with httpx2.AsyncClient(headers=gateway.headers()) as http:
        async with Client(streamable_http_client(gateway.url, http_client=http)) as client:
            assert client.protocol_version == MODERN_PROTOCOL_VERSIONS[-1]
            assert not (await client.call_tool("list_stacks", {})).is_error
