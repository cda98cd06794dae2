"""Gateway fixtures: operations over a throwaway stacks dir, and a real `compose-agent serve` process."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.audit import AuditLog
from gateway.config import load_settings
from gateway.metrics import ControlPlane
from gateway.operations import ComposeOperations
from tests.conftest import StackFactory, free_port
from tests.gateway.mcp_tools import REPO
from tests.gateway.policy_cases import OUTSIDE_MARKER


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.log"


@pytest.fixture
def ops(stacks: StackFactory, audit_path: Path) -> Iterator[ComposeOperations]:
    environ = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        # The judged models Compose runs are kept here (gateway.compose.runfile), beside the test's stacks.
        "COMPOSE_AGENT_STATE_DIR": str(audit_path.parent / "state"),
    }
    settings = load_settings(environ, stacks_dir=stacks.root)
    audit = AuditLog(audit_path)
    operations = ComposeOperations.from_settings(
        settings, plane=ControlPlane.COMPOSE_AGENT, audit=audit, environ=dict(os.environ)
    )
    yield operations
    operations.close()
    audit.close()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the stacks dir, holding files no stack may read, each carrying OUTSIDE_MARKER."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.env").write_text(f"MARKER={OUTSIDE_MARKER}\n")
    (folder / "other.yaml").write_text(
        f"services:\n  base:\n    image: busybox\n    command: {OUTSIDE_MARKER}\n"
        f"    environment:\n      MARKER: {OUTSIDE_MARKER}\n"
    )
    (folder / "Dockerfile").write_text("FROM scratch\n")
    return folder


@dataclass
class GatewayProcess:
    url: str
    base: str
    agent_token: str
    panel_token: str
    audit: Path
    stderr: Path
    process: subprocess.Popen[bytes]

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.agent_token}"}

    def stderr_text(self) -> str:
        return self.stderr.read_text(errors="replace")


def wait_for_health(base: str, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode} before answering /health")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the gateway did not answer {base}/health within {timeout}s")


def start_gateway(
    tmp_path: Path,
    stacks_dir: Path,
    *extra_args: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
    prefix: Sequence[str] = (),
) -> GatewayProcess:
    """A `compose-agent serve` on ``port`` (default: a free one); ``prefix`` runs it under a wrapper
    (``prlimit --nofile=...``)."""
    port = port or free_port()
    agent_token, panel_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    state = tmp_path / f"state-{port}"
    full_env = {
        **os.environ,
        "COMPOSE_AGENT_TOKEN": agent_token,
        "STATUS_PANEL_TOKEN": panel_token,
        "COMPOSE_AGENT_STATE_DIR": str(state),
        "AUDIT_LOG": str(state / "audit.log"),
        **(env or {}),
    }
    stderr = tmp_path / f"gateway-{port}.err"
    with stderr.open("wb") as err:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--port",
                str(port),
                "--stacks-dir",
                str(stacks_dir),
                *extra_args,
            ],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base, process)
    except RuntimeError:
        process.kill()
        process.wait()
        raise RuntimeError(stderr.read_text(errors="replace")) from None
    return GatewayProcess(f"{base}/mcp", base, agent_token, panel_token, state / "audit.log", stderr, process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def gateway(tmp_path: Path, stacks: StackFactory) -> Iterator[GatewayProcess]:
    """A real `compose-agent serve` on a free port, over the test's stacks dir, with known tokens."""
    proc = start_gateway(tmp_path, stacks.root)
    yield proc
    stop_process(proc.process)


def inspector_path() -> str:
    """The pinned MCP Inspector CLI: ``MCP_INSPECTOR`` when set, else the one scripts/setup.sh installs.

    Setup puts it into this checkout's ``.venv/inspector`` (pinned by scripts/inspector/package-lock.json),
    and scripts/test.sh exports MCP_INSPECTOR to that path unless the caller names another.
    """
    candidates = [
        os.environ.get("MCP_INSPECTOR", ""),
        str(REPO / ".venv" / "inspector" / "node_modules" / ".bin" / "mcp-inspector"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    pytest.fail(
        "the MCP Inspector CLI is missing: run scripts/setup.sh (it installs it into .venv/inspector), "
        "or `npm ci` in a copy of scripts/inspector and set MCP_INSPECTOR to its node_modules/.bin/mcp-inspector"
    )
