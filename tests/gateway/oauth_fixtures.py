"""A real gateway with its OAuth authorization server on, people made with the real ``users`` command.

The public URL is the gateway's own loopback address (``http://127.0.0.1:<port>``), which the
gateway accepts without TLS; the state folder can be handed to a second gateway to check what a
restart keeps.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import free_port
from tests.gateway.conftest import GatewayProcess, start_gateway
from tests.gateway.oauth_person import MemoryStorage, ScriptedPerson, oauth_client

__all__ = [
    "PASSWORD",
    "OAuthGateway",
    "audit_lines",
    "connect",
    "run_users",
    "start_oauth_gateway",
]

PASSWORD = "correct horse battery staple"


def run_users(
    state: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``compose-agent users ...`` as the operator runs it, against ``state``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "users", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, "COMPOSE_AGENT_STATE_DIR": str(state), "CONFIG_PATH": str(state / "none.json"), **(env or {})},
    )


@dataclass
class OAuthGateway:
    gw: GatewayProcess
    public: str
    state: Path
    port: int

    @property
    def url(self) -> str:
        return f"{self.public}/mcp"

    def add_person(self, name: str, *grants: str, password: str = PASSWORD) -> None:
        args = [arg for grant in grants for arg in ("--grant", grant)]
        done = run_users(self.state, "add", name, "--password-stdin", *args, stdin=password + "\n")
        assert done.returncode == 0, done.stderr

    def users(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_users(self.state, *args)


def start_oauth_gateway(
    tmp_path: Path,
    stacks_dir: Path,
    *,
    state: Path | None = None,
    port: int | None = None,
    env: dict[str, str] | None = None,
    people: dict[str, list[str]] | None = None,
) -> OAuthGateway:
    """A gateway on a free port whose public URL is its own address; ``people`` are added before it starts."""
    port = port or free_port()
    state = state or tmp_path / f"oauth-state-{port}"
    public = f"http://127.0.0.1:{port}"
    for name, grants in (people or {}).items():
        args = [arg for grant in grants for arg in ("--grant", grant)]
        done = run_users(state, "add", name, "--password-stdin", *args, stdin=PASSWORD + "\n")
        assert done.returncode == 0, done.stderr
    gw = start_gateway(
        tmp_path,
        stacks_dir,
        "--public-url",
        public,
        port=port,
        env={"COMPOSE_AGENT_STATE_DIR": str(state), "AUDIT_LOG": str(state / "audit.log"), **(env or {})},
    )
    return OAuthGateway(gw, public, state, port)


@asynccontextmanager
async def connect(
    url: str,
    person: ScriptedPerson,
    *,
    mode: Literal["legacy", "auto"] = "legacy",
    storage: MemoryStorage | None = None,
    verify: ssl.SSLContext | bool = True,
    **client_options: Any,
) -> AsyncIterator[Client]:
    """The SDK's client over Streamable HTTP, authorizing through the SDK's own OAuth client."""
    auth = oauth_client(url, person, storage=storage, **client_options)
    try:
        async with httpx2.AsyncClient(auth=auth, timeout=httpx2.Timeout(30, read=120), verify=verify) as http:
            async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
                yield client
    finally:
        await person.aclose()


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
