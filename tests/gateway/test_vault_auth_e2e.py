"""End to end: a real `compose-agent serve` whose only token configuration is Vault, driven over Streamable HTTP.

The process gets VAULT_ADDRESS, VAULT_TOKEN, DEPLOYMENT_HASH and VAULT_REFRESH_SECS (plus a state dir
and an audit path) and nothing else token-related. Tokens are written to OpenBao before start, and
rotated with the real `compose-agent vault store` command while the gateway runs.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory, free_port
from tests.gateway import vault_fixtures
from tests.gateway.conftest import stop_process, wait_for_health
from tests.gateway.vault_fixtures import OpenBao, fresh_hash

pytestmark = [pytest.mark.anyio, pytest.mark.vault, pytest.mark.docker]

# The session-wide OpenBao dev server (a fixture; assigned rather than imported so ruff sees no shadowing).
openbao = vault_fixtures.openbao

REFRESH_SECS = 1.0
_INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "probe", "version": "0"}},
}


@dataclass
class VaultGateway:
    base: str
    deployment: str
    tokens: dict[str, str]
    stderr: Path
    audit: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"


def _gateway_env(tmp_path: Path, bao_address: str, vault_token: str, deployment: str, **extra: str) -> dict[str, str]:
    state = tmp_path / "state"
    return {
        # What the process needs to run Python and reach Docker and the Compose plugin; nothing token-related.
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "VAULT_ADDRESS": bao_address,
        "VAULT_TOKEN": vault_token,
        "DEPLOYMENT_HASH": deployment,
        "VAULT_REFRESH_SECS": str(REFRESH_SECS),
        "COMPOSE_AGENT_STATE_DIR": str(state),
        "AUDIT_LOG": str(state / "audit.log"),
        **extra,
    }


def _serve_argv(port: int, stacks_dir: Path) -> list[str]:
    return [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--stacks-dir", str(stacks_dir)]


@pytest.fixture
def vault_gateway(tmp_path: Path, stacks: StackFactory, openbao: OpenBao) -> Iterator[VaultGateway]:
    deployment = fresh_hash()
    tokens = {key: secrets.token_urlsafe(24) for key in ("compose_agent_token", "status_panel_token")}
    for key, value in tokens.items():
        openbao.write_token(f"agent/{deployment}/{key}", value)
    port = free_port()
    env = _gateway_env(tmp_path, openbao.address, openbao.root_token, deployment)
    stderr = tmp_path / "gateway.err"
    with stderr.open("wb") as err:
        # cwd is the test's folder, so no config.json of the checkout is read.
        process = subprocess.Popen(
            _serve_argv(port, stacks.root), env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base, process)
    except RuntimeError as exc:
        stop_process(process)
        pytest.fail(f"{exc}\n{stderr.read_text(errors='replace')}")
    gateway = VaultGateway(base, deployment, tokens, stderr, Path(env["AUDIT_LOG"]), process)
    yield gateway
    stop_process(process)


@asynccontextmanager
async def _mcp(gw: VaultGateway, token: str) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        async with Client(streamable_http_client(gw.url, http_client=http)) as client:
            yield client


def _text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


async def _status(gw: VaultGateway, token: str | None) -> int:
    """The HTTP status of an MCP initialize sent with ``token`` (None: no Authorization header)."""
    headers = {"Accept": "application/json, text/event-stream"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.post(gw.url, json=_INITIALIZE, headers=headers)
    return response.status_code


def _assert_no_token_leaked(gw: VaultGateway, *secret_values: str) -> None:
    stderr = gw.stderr.read_text(errors="replace")
    audit = gw.audit.read_text(errors="replace") if gw.audit.exists() else ""
    for value in secret_values:
        assert value not in stderr, "a token appeared in the gateway's stderr"
        assert value not in audit, "a token appeared in the audit log"


async def test_each_vault_token_works_with_its_own_scope(
    vault_gateway: VaultGateway, stacks: StackFactory, openbao: OpenBao
) -> None:
    gw = vault_gateway
    project = stacks.make(WEB_WORKER, files=STACK_FILES)

    async with _mcp(gw, gw.tokens["compose_agent_token"]) as agent:
        rendered = await agent.call_tool("config", {"project": project})
        assert not rendered.is_error, _text(rendered)

    async with _mcp(gw, gw.tokens["status_panel_token"]) as panel:
        listed = await panel.call_tool("list_stacks", {})
        assert not listed.is_error, _text(listed)
        assert project in _text(listed) or project in str(listed.structured_content)
        refused = await panel.call_tool("config", {"project": project})
        assert refused.is_error
        assert "status_panel_token" in _text(refused) and "config" in _text(refused)

    _assert_no_token_leaked(gw, *gw.tokens.values(), openbao.root_token)


async def test_a_wrong_or_missing_token_gets_401(vault_gateway: VaultGateway) -> None:
    assert await _status(vault_gateway, "not-a-token-" + secrets.token_hex(8)) == 401
    assert await _status(vault_gateway, None) == 401
    assert await _status(vault_gateway, vault_gateway.tokens["compose_agent_token"]) == 200


async def test_a_token_rotated_in_vault_is_accepted_and_the_old_one_refused_within_one_refresh(
    vault_gateway: VaultGateway, openbao: OpenBao
) -> None:
    gw = vault_gateway
    old = gw.tokens["compose_agent_token"]
    assert await _status(gw, old) == 200

    # Rotate with the operator's own command; the new token comes in on stdin.
    new = secrets.token_urlsafe(24)
    cli_env = {"PATH": os.environ["PATH"], "VAULT_ADDRESS": openbao.address, "VAULT_TOKEN": openbao.root_token}
    stored = subprocess.run(
        [sys.executable, "-m", "gateway", "vault", "store", "--deployment-hash", gw.deployment]
        + ["--key", "compose_agent_token", "--token", "-"],
        input=f"{new}\n",
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=60,
    )
    assert stored.returncode == 0, stored.stderr

    # One refresh interval, plus a margin for a loaded 2-core machine to run the read and the probe.
    with anyio.fail_after(REFRESH_SECS + 2.0):
        while await _status(gw, new) != 200:
            await anyio.sleep(0.05)
    assert await _status(gw, old) == 401
    assert await _status(gw, gw.tokens["status_panel_token"]) == 200

    async with _mcp(gw, new) as agent:
        assert not (await agent.call_tool("list_stacks", {})).is_error
    _assert_no_token_leaked(gw, old, new, gw.tokens["status_panel_token"], openbao.root_token)


def test_an_unreachable_vault_at_start_exits_non_zero_naming_its_address(tmp_path: Path) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    vault_token = f"vt-{secrets.token_hex(8)}"
    env = _gateway_env(tmp_path, address, vault_token, fresh_hash(), VAULT_STARTUP_TIMEOUT="2")
    (tmp_path / "stacks").mkdir()

    # VAULT_STARTUP_TIMEOUT=2: the gateway gives up on its own long before this deadline.
    result = subprocess.run(
        _serve_argv(free_port(), tmp_path / "stacks"), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )

    assert result.returncode != 0
    assert address in result.stderr
    assert vault_token not in result.stderr and vault_token not in result.stdout
