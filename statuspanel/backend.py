"""Where the panel's operations run: the compose-agent over MCP, or in-process in legacy mode.

Routes talk to a :class:`Backend` and never know which one they have: :class:`GatewayBackend`
here, or :class:`statuspanel.legacy.LegacyBackend`. Both return the gateway's result models and
raise :mod:`statuspanel.errors` only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import anyio
import httpx2

from gateway.api import (
    Action,
    ActionResult,
    ApprovalInfo,
    CommandExecutionMetrics,
    ControlPlane,
    DeployResult,
    LogsResult,
    PlanResult,
    PsResult,
    StackList,
    VersionList,
)

from .client import GatewayClient
from .errors import ActionFailed
from .tasks import TaskView

__all__ = ["ActionCall", "Backend", "GatewayBackend", "LogsCall", "RollbackCall", "merge_metrics"]

logger = logging.getLogger(__name__)


# One call of an operation, as a route asks for it. Each builds the arguments of the gateway's tool;
# the in-process operation takes the same ones by the same names, so both backends send what one
# method built.


@dataclass(frozen=True)
class LogsCall:
    """The last ``tail`` lines of ``services`` (every one when none), since ``since``, matching ``grep``."""

    project: str
    services: list[str] | None
    tail: int
    since: str | None
    grep: str | None

    def arguments(self) -> dict[str, Any]:
        """The ``logs`` tool's arguments."""
        return {**asdict(self), "services": self.services or None}


@dataclass(frozen=True)
class ActionCall:
    """up, down, restart, start or stop; ``on_behalf_of`` is the person logged in, for the audit line.

    ``confirm`` is the token of a confirmation the gateway asked for (``policy.confirm``), and
    ``approval`` the id of a person's approval it waited for (``policy.approve``).
    """

    project: str
    action: Action
    services: list[str] | None = None
    volumes: bool = False
    on_behalf_of: str | None = None
    confirm: str | None = None
    approval: str | None = None

    def arguments(self) -> dict[str, Any]:
        """The tool's arguments but ``confirm``: ``down`` takes ``volumes``, the others ``services``."""
        if self.action == "down":
            return {"project": self.project, "volumes": self.volumes}
        return {"project": self.project, "services": self.services or None}


@dataclass(frozen=True)
class RollbackCall:
    """Bring back ``version`` (the one before the current without it) and bring it up."""

    project: str
    version: int | None
    on_behalf_of: str | None = None
    confirm: str | None = None
    approval: str | None = None

    def arguments(self) -> dict[str, Any]:
        """The ``rollback`` tool's arguments but ``confirm``."""
        return {"project": self.project, "version": self.version}


class Backend(Protocol):
    """The operations behind the panel's routes."""

    control_plane: ControlPlane
    legacy: bool
    # Whether long actions can run as gateway tasks the browser follows (not in legacy mode).
    tasks: bool

    def lifespan(self) -> AbstractAsyncContextManager[None]:
        """Background work and resources for as long as the app runs."""
        ...

    async def list_stacks(self) -> StackList: ...

    async def ps(self, project: str, host: str | None = None) -> PsResult:
        """The stack's services; on ``host`` (None: the gateway's own)."""
        ...

    async def logs(self, call: LogsCall) -> LogsResult: ...

    async def action(self, call: ActionCall) -> ActionResult:
        """Run ``call.action`` on the stack, for the person in ``call.on_behalf_of``."""
        ...

    async def plan(self, project: str) -> PlanResult:
        """What ``up`` would do now, and what ``down`` would remove. Changes nothing."""
        ...

    async def versions(self, project: str) -> VersionList:
        """The kept versions of the stack's compose file."""
        ...

    async def rollback(self, call: RollbackCall) -> DeployResult:
        """Bring back an earlier version (the previous one without ``version``) and bring it up."""
        ...

    async def approvals(self) -> list[ApprovalInfo]:
        """The changes that wait (or waited) for a person, newest first."""
        ...

    async def approval(self, approval_id: str) -> ApprovalInfo:
        """One of them (NotFound when there is none)."""
        ...

    async def decide(self, approval_id: str, *, approve: bool, on_behalf_of: str) -> ApprovalInfo:
        """The person ``on_behalf_of`` approves (or rejects) a change that waits."""
        ...

    async def compose_agent_status(self) -> str:
        """``up``, ``down`` or ``disabled``."""
        ...

    async def start_action(self, call: ActionCall) -> TaskView:
        """Start ``call`` as a task; its handle (or a finished view if it was answered at once)."""
        ...

    async def start_rollback(self, call: RollbackCall) -> TaskView:
        """Start a rollback as a task."""
        ...

    async def task(self, task_id: str, on_behalf_of: str | None) -> TaskView:
        """A task of the person's, as it is now."""
        ...

    async def cancel_task(self, task_id: str, on_behalf_of: str | None) -> TaskView:
        """Stop a task of the person's; the stack stays as Compose left it."""
        ...

    async def metrics(self) -> dict[str, Any]:
        """The panel's own executions merged with the gateway's."""
        ...


def merge_metrics(*snapshots: dict[str, Any]) -> dict[str, Any]:
    """Add up metrics snapshots; the last control plane is the one of the newest command."""
    merged: dict[str, Any] = {
        "status_panel_count": 0,
        "compose_agent_count": 0,
        "total_count": 0,
        "success_count": 0,
        "failure_count": 0,
        "last_control_plane": None,
        "last_command_timestamp_ms": None,
        "by_tool": {},
    }
    for snap in snapshots:
        for key in ("status_panel_count", "compose_agent_count", "total_count", "success_count", "failure_count"):
            merged[key] += int(snap.get(key) or 0)
        for tool, count in (snap.get("by_tool") or {}).items():
            merged["by_tool"][tool] = merged["by_tool"].get(tool, 0) + int(count)
        stamp = snap.get("last_command_timestamp_ms")
        newest = merged["last_command_timestamp_ms"]
        if stamp is not None and (newest is None or stamp >= newest):
            merged["last_command_timestamp_ms"] = stamp
            merged["last_control_plane"] = snap.get("last_control_plane")
    return merged


class GatewayBackend:
    """Every operation is a tool call on the compose-agent, which records it as ``compose_agent``."""

    control_plane = ControlPlane.COMPOSE_AGENT
    legacy = False
    tasks = True

    def __init__(self, client: GatewayClient, *, probe_timeout: float = 1.5) -> None:
        self.client = client
        self.probe_timeout = probe_timeout
        # The panel runs nothing itself in this mode; kept so the metrics shape is the same in both modes.
        self.own_metrics = CommandExecutionMetrics()
        self._http: httpx2.AsyncClient | None = None

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        async with httpx2.AsyncClient(timeout=self.probe_timeout) as http, anyio.create_task_group() as tg:
            self._http = http
            await tg.start(self.client.run)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                self._http = None

    async def list_stacks(self) -> StackList:
        return StackList.model_validate(await self.client.call("list_stacks"))

    async def ps(self, project: str, host: str | None = None) -> PsResult:
        arguments = {"project": project} if host is None else {"project": project, "host": host}
        return PsResult.model_validate(await self.client.call("ps", arguments))

    async def logs(self, call: LogsCall) -> LogsResult:
        return LogsResult.model_validate(await self.client.call("logs", call.arguments()))

    async def action(self, call: ActionCall) -> ActionResult:
        arguments = {**call.arguments(), "confirm": call.confirm, "approval": call.approval}
        payload = await self.client.call(call.action, arguments, on_behalf_of=call.on_behalf_of)
        return ActionResult.model_validate(payload)

    async def plan(self, project: str) -> PlanResult:
        return PlanResult.model_validate(await self.client.call("plan", {"project": project}))

    async def versions(self, project: str) -> VersionList:
        return VersionList.model_validate(await self.client.call("versions", {"project": project}))

    async def rollback(self, call: RollbackCall) -> DeployResult:
        arguments = {**call.arguments(), "confirm": call.confirm, "approval": call.approval}
        payload = await self.client.call("rollback", arguments, on_behalf_of=call.on_behalf_of)
        return DeployResult.model_validate(payload)

    async def approvals(self) -> list[ApprovalInfo]:
        data = _json_object(await self.client.read("compose://approvals"))
        entries = data.get("approvals")
        if not isinstance(entries, list):
            raise ActionFailed("the compose-agent's approvals resource holds no list")
        return [ApprovalInfo.model_validate(entry) for entry in entries]

    async def approval(self, approval_id: str) -> ApprovalInfo:
        return ApprovalInfo.model_validate(_json_object(await self.client.read(f"compose://approvals/{approval_id}")))

    async def decide(self, approval_id: str, *, approve: bool, on_behalf_of: str) -> ApprovalInfo:
        tool = "approve" if approve else "reject"
        payload = await self.client.call(tool, {"id": approval_id}, on_behalf_of=on_behalf_of)
        return ApprovalInfo.model_validate(payload)

    # -- tasks: ---------------------------------------------------------------------------------

    async def start_action(self, call: ActionCall) -> TaskView:
        arguments = {**call.arguments(), "confirm": call.confirm}
        return await self.client.start(call.action, arguments, on_behalf_of=call.on_behalf_of)

    async def start_rollback(self, call: RollbackCall) -> TaskView:
        arguments = {**call.arguments(), "confirm": call.confirm}
        return await self.client.start("rollback", arguments, on_behalf_of=call.on_behalf_of)

    async def task(self, task_id: str, on_behalf_of: str | None) -> TaskView:
        return await self.client.task(task_id, on_behalf_of=on_behalf_of)

    async def cancel_task(self, task_id: str, on_behalf_of: str | None) -> TaskView:
        return await self.client.cancel(task_id, on_behalf_of=on_behalf_of)

    async def _get(self, path: str) -> httpx2.Response | None:
        if self._http is None:
            return None
        try:
            return await self._http.get(self.client.base_url + path)
        except httpx2.HTTPError as exc:
            logger.debug("GET %s%s failed: %s", self.client.base_url, path, exc)
            return None

    async def compose_agent_status(self) -> str:
        response = await self._get("/health")
        return "up" if response is not None and response.status_code == 200 else "down"

    async def metrics(self) -> dict[str, Any]:
        own = self.own_metrics.snapshot()
        response = await self._get("/api/v1/metrics")
        if response is None or response.status_code != 200:
            merged = merge_metrics(own)
            merged["compose_agent_reachable"] = False
            return merged
        try:
            remote = response.json()
        except ValueError:
            remote = {}
        merged = merge_metrics(own, remote if isinstance(remote, dict) else {})
        merged["compose_agent_reachable"] = True
        return merged


def _json_object(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ActionFailed("the compose-agent sent something other than a JSON object")
    return data
