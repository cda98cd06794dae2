"""Status panel fixtures: a real gateway process, the panel as a real process, and an in-memory backend.

The in-memory backend isolates the panel's own pieces (auth, validation, pages) in fast tests; every
behaviour that involves the gateway is also tested through a real ``compose-agent serve``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.testclient import TestClient

from gateway.api import (
    ActionResult,
    ApprovalInfo,
    CommandExecutionMetrics,
    ControlPlane,
    DeployResult,
    DownRisk,
    LogsResult,
    PlanAction,
    PlanResult,
    PsResult,
    ServiceStatus,
    StackInfo,
    StackList,
    Verdict,
    VersionInfo,
    VersionList,
    VolumeRisk,
)
from statuspanel.app import create_app
from statuspanel.backend import ActionCall, LogsCall, RollbackCall
from statuspanel.credentials import Authenticator
from statuspanel.errors import ConfirmationNeeded, Forbidden, GatewayUnavailable, NotFound
from statuspanel.tasks import TaskView
from tests.conftest import StackFactory, free_port
from tests.polling import wait_for

STARTUP_TIMEOUT = 30.0


def poll(condition: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Call ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    return wait_for(condition, timeout=timeout, interval=interval, what=what, ignore=(Exception,))


def _clean_env(**extra: str) -> dict[str, str]:
    # A stray token or legacy switch from the developer's shell must not leak into a test process.
    drop = {
        "COMPOSE_AGENT_TOKEN",
        "STATUS_PANEL_TOKEN",
        "COMPOSE_AGENT_ENABLED",
        "COMPOSE_AGENT_URL",
        "CONTROL_PLANE",
        "CONFIG_PATH",
        "STATUS_PANEL_USERNAME",
        "STATUS_PANEL_PASSWORD",
        "WATCHDOG_URL",
        "VAULT_ADDRESS",
        "VAULT_TOKEN",
        "STATUS_PANEL_ALLOWED_HOSTS",
        "STATUS_PANEL_HTTPS_ONLY",
    }
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


@dataclass
class Process:
    """A child process with its output in a file, stopped on teardown."""

    args: list[str]
    env: dict[str, str]
    log: Path
    base: str
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.process = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        out.close()

    def launch(self) -> None:
        """Start, and wait until healthy; a process that never gets there is stopped."""
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT) -> None:
        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.args[:3]} exited with {self.process.returncode}:\n{self.output()}")
            return httpx2.get(self.base + "/health", timeout=1).status_code == 200

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if healthy():
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.args[:3]} did not answer /health within {timeout}s:\n{self.output()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Gateway(Process):
    port: int = 0
    agent_token: str = ""
    panel_token: str = ""

    @property
    def mcp_url(self) -> str:
        return f"{self.base}/mcp"


@dataclass
class Panel(Process):
    token: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def client(self, token: str | None = "default") -> httpx2.Client:
        headers = {}
        bearer = self.token if token == "default" else token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        return httpx2.Client(base_url=self.base, headers=headers, timeout=60)


def launch_gateway(
    stacks: StackFactory,
    tmp_path: Path,
    *,
    env: dict[str, str],
    name: str = "gateway",
    agent_token: str = "",
    panel_token: str = "",
) -> Gateway:
    """A healthy ``compose-agent serve`` over the ``stacks`` dir, with ``env`` over a clean environment.

    The state dir and ``config.json`` are the test's own unless ``env`` names others; ``agent_token`` and
    ``panel_token`` only record what ``env`` gives the gateway, for the test to present.
    """
    port = free_port()
    defaults = {
        "COMPOSE_AGENT_STATE_DIR": str(tmp_path / f"{name}-state"),
        "CONFIG_PATH": str(tmp_path / "no-config.json"),
    }
    gw = Gateway(
        args=["compose-agent", "serve", "--port", str(port), "--stacks-dir", str(stacks.root)],
        env=_clean_env(**{**defaults, **env}),
        log=tmp_path / f"{name}.log",
        base=f"http://127.0.0.1:{port}",
        port=port,
        agent_token=agent_token,
        panel_token=panel_token,
    )
    gw.launch()
    return gw


def start_gateway(
    stacks: StackFactory, tmp_path: Path, *, config: dict[str, Any] | None = None, name: str = "gateway"
) -> Gateway:
    """A real ``compose-agent serve`` over the ``stacks`` dir, with both tokens set, and ``config`` as
    its ``config.json`` (the operator's policy, say)."""
    agent_token, panel_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    env = {"COMPOSE_AGENT_TOKEN": agent_token, "STATUS_PANEL_TOKEN": panel_token}
    if config is not None:
        config_path = tmp_path / f"{name}-config.json"
        config_path.write_text(json.dumps(config))
        env["CONFIG_PATH"] = str(config_path)
    return launch_gateway(stacks, tmp_path, env=env, name=name, agent_token=agent_token, panel_token=panel_token)


@pytest.fixture
def gateway(stacks: StackFactory, tmp_path: Path) -> Iterator[Gateway]:
    """A real ``compose-agent serve`` over the ``stacks`` dir, with both tokens set."""
    gw = start_gateway(stacks, tmp_path)
    try:
        yield gw
    finally:
        gw.stop()


def start_panel(
    tmp_path: Path, *, env: dict[str, str], token: str | None, name: str = "panel", args: Sequence[str] = ()
) -> Panel:
    port = free_port()
    defaults = {
        "COMPOSE_AGENT_STATE_DIR": str(tmp_path / f"{name}-state"),
        "CONFIG_PATH": str(tmp_path / "no-config.json"),
    }
    full_env = _clean_env(**{**defaults, **env})
    if token:
        full_env["STATUS_PANEL_TOKEN"] = token
    command = [sys.executable, "-m", "statuspanel", "serve", "--port", str(port), *args]
    panel = Panel(
        args=command, env=full_env, log=tmp_path / f"{name}.log", base=f"http://127.0.0.1:{port}", token=token
    )
    panel.launch()
    return panel


@pytest.fixture
def panel(gateway: Gateway, tmp_path: Path) -> Iterator[Panel]:
    """``python -m statuspanel serve`` pointed at the ``gateway`` fixture, with the panel's token."""
    p = start_panel(tmp_path, env={"COMPOSE_AGENT_URL": gateway.mcp_url}, token=gateway.panel_token)
    try:
        yield p
    finally:
        p.stop()


# --- an in-memory backend for the panel's own unit tests ------------------------------------------


class MemoryBackend:
    """Two stacks in memory; records every call. ``unavailable`` makes every call answer 503."""

    control_plane = ControlPlane.COMPOSE_AGENT
    legacy = False
    tasks = False  # the routes then answer every action synchronously, as in legacy mode

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.acted_for: list[str | None] = []  # the on_behalf_of of each action, in order
        self.unavailable = False
        self.metrics_data = CommandExecutionMetrics()
        self.state = {"shop": {"web": "running", "db": "running"}, "blog": {"app": "exited"}}
        self.confirm_tools: set[str] = set()  # the operator's policy.confirm, as the gateway would apply it
        self.waiting: dict[str, ApprovalInfo] = {}  # what the gateway would list
        self.decided: list[tuple[str, bool, str]] = []  # (id, approved, person), in order
        self.sent_approvals: list[str | None] = []  # the approval each action carried, in order

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        yield

    def _check(self, project: str | None = None) -> None:
        if self.unavailable:
            raise GatewayUnavailable("cannot reach the compose-agent at memory://")
        if project is not None and project not in self.state:
            raise NotFound(f"stack '{project}' not found; known stacks: {', '.join(sorted(self.state))}")

    async def list_stacks(self) -> StackList:
        self.calls.append(("list_stacks", {}))
        self._check()
        return StackList(
            stacks=[
                StackInfo(
                    name=name,
                    external=False,
                    containers=len(svcs),
                    running=sum(s == "running" for s in svcs.values()),
                )
                for name, svcs in sorted(self.state.items())
            ]
        )

    async def ps(self, project: str, host: str | None = None) -> PsResult:
        self.calls.append(("ps", {"project": project}))
        self._check(project)
        return PsResult(
            project=project,
            services=[
                ServiceStatus(
                    service=svc,
                    container=f"{project}-{svc}-1",
                    state=state,
                    health="healthy" if state == "running" else None,
                    exit_code=0 if state == "exited" else None,
                    ports=["127.0.0.1:8080->80/tcp"] if svc == "web" else [],
                    image="busybox:latest",
                    started_at="2026-11-26T20:00:00.123456789Z" if state == "running" else None,
                )
                for svc, state in sorted(self.state[project].items())
            ],
        )

    async def logs(self, call: LogsCall) -> LogsResult:
        self.calls.append(("logs", asdict(call)))  # the call as the route made it
        self._check(call.project)
        lines = [f"web | line {i}" for i in range(call.tail)]
        return LogsResult(project=call.project, text="\n".join(lines), lines=len(lines), truncated=False)

    async def action(self, call: ActionCall) -> ActionResult:
        project, action, services = call.project, call.action, call.services
        self.calls.append((action, {"project": project, "services": services, "volumes": call.volumes}))
        self.acted_for.append(call.on_behalf_of)
        self.sent_approvals.append(call.approval)
        self._check(project)
        self._confirmed(action, project, call.confirm)
        self.metrics_data.record_execution(ControlPlane.COMPOSE_AGENT, action)
        return ActionResult(project=project, action=action, ok=True, services=services, duration_ms=1.0)

    def _confirmed(self, tool: str, project: str, confirm: str | None) -> None:
        """As the gateway does with ``policy.confirm``: the first call gets the plan and a token."""
        if tool not in self.confirm_tools:
            return
        if confirm is None:
            raise ConfirmationNeeded(
                f"{tool} on '{project}' needs confirmation; nothing was changed.\nwould remove: {project}-web-1\n"
                f'To go ahead, repeat the same call with confirm="{CONFIRM_TOKEN}".',
                CONFIRM_TOKEN,
            )
        if confirm != CONFIRM_TOKEN:
            raise Forbidden("the confirmation token is unknown, already used or expired; nothing was changed")

    async def plan(self, project: str) -> PlanResult:
        self.calls.append(("plan", {"project": project}))
        self._check(project)
        states = self.state[project]
        return PlanResult(
            project=project,
            version=2,
            actions=[
                PlanAction(service=svc, action="unchanged" if state == "running" else "start", reason=f"it is {state}")
                for svc, state in sorted(states.items())
            ],
            policy=Verdict(allowed=project != "blog", rules=[] if project != "blog" else ["privileged"]),
            down=DownRisk(
                containers=[f"{project}-{svc}-1" for svc in sorted(states)],
                volumes=[VolumeRisk(name=f"{project}_data", kind="named", removed_by_down_volumes=True)],
            ),
        )

    async def versions(self, project: str) -> VersionList:
        self.calls.append(("versions", {"project": project}))
        self._check(project)
        kept = [
            VersionInfo(
                version=n,
                created=f"2026-11-2{n}T10:00:00Z",
                sha256=f"{n}" * 64,
                source="deploy",
                caller="compose_agent_token",
                current=n == 2,
            )
            for n in (1, 2)
        ]
        return VersionList(project=project, current=2, versions=kept)

    async def rollback(self, call: RollbackCall) -> DeployResult:
        project, version = call.project, call.version
        self.calls.append(("rollback", {"project": project, "version": version}))
        self.acted_for.append(call.on_behalf_of)
        self._check(project)
        self._confirmed("rollback", project, call.confirm)
        return DeployResult(
            project=project,
            action="rollback",
            version=version or 1,
            previous_version=2,
            sha256="1" * 64,
            created=False,
            changes=[],
            duration_ms=1.0,
            message=f"rollback finished on '{project}': version {version or 1} is on disk and up",
        )

    async def approvals(self) -> list[ApprovalInfo]:
        self._check()
        return list(self.waiting.values())

    async def approval(self, approval_id: str) -> ApprovalInfo:
        self._check()
        if approval_id not in self.waiting:
            raise NotFound(f"there is no approval at 'compose://approvals/{approval_id}'")
        return self.waiting[approval_id]

    async def decide(self, approval_id: str, *, approve: bool, on_behalf_of: str) -> ApprovalInfo:
        found = await self.approval(approval_id)
        if found.on_behalf_of == on_behalf_of:
            raise Forbidden(f"{on_behalf_of} asked for this change, so another person must approve or reject it")
        self.decided.append((approval_id, approve, on_behalf_of))
        decided = found.model_copy(update={"status": "approved" if approve else "rejected", "decided_by": on_behalf_of})
        self.waiting[approval_id] = decided
        return decided

    async def compose_agent_status(self) -> str:
        return "down" if self.unavailable else "up"

    async def metrics(self) -> dict[str, Any]:
        return self.metrics_data.snapshot()

    async def start_action(self, call: ActionCall) -> TaskView:
        raise NotFound("no tasks in memory")

    async def start_rollback(self, call: RollbackCall) -> TaskView:
        raise NotFound("no tasks in memory")

    async def task(self, task_id: str, on_behalf_of: str | None) -> TaskView:
        raise NotFound("no tasks in memory")

    async def cancel_task(self, task_id: str, on_behalf_of: str | None) -> TaskView:
        raise NotFound("no tasks in memory")


# -- the app alone, over the in-memory backend (test_app.py, test_security.py) ----------------------

APP_TOKEN = "panel-token-for-tests"
CONFIRM_TOKEN = "confirm-token-for-tests"
# The panel answers only to loopback names by default, and TestClient's own "testserver" is not one.
APP_BASE = "http://127.0.0.1:5001"


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def client(backend: MemoryBackend) -> Iterator[TestClient]:
    """The panel with a token and a username/password login, over ``backend``."""
    app = create_app(backend, Authenticator(APP_TOKEN, "admin", "s3cret-pass"), session_secret="x" * 32)
    with TestClient(app, base_url=APP_BASE, follow_redirects=False) as c:
        yield c


def bearer(token: str = APP_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
