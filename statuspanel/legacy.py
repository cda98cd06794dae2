"""Legacy mode (``COMPOSE_AGENT_ENABLED=false``): the panel runs the operations in its own process.

The panel then holds the Docker socket itself and every command is counted as ``status_panel``.
The gateway's errors are translated into :mod:`statuspanel.errors` here, so that routes see the
same errors in both modes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

from gateway.api import (
    ActionResult,
    ApprovalInfo,
    ConfirmationRequired,
    ControlPlane,
    DeployResult,
    GatewayError,
    LogsResult,
    PlanResult,
    PsResult,
    StackList,
    VersionList,
)

from .backend import ActionCall, LogsCall, RollbackCall, merge_metrics
from .errors import BadRequest, ConfirmationNeeded, NotFound, PanelError, for_kind
from .tasks import TaskView

if TYPE_CHECKING:  # importing the operations pulls in docker-py, which normal mode must not need
    from gateway.api import AuditLog, ComposeOperations

__all__ = ["LegacyBackend", "translate"]

# They belong to the compose-agent's tools: the panel running Compose itself has none.
_NO_APPROVALS = "approvals wait at the compose-agent; a panel in legacy mode (COMPOSE_AGENT_ENABLED=false) has none"
_NO_TASKS = "no tasks in legacy mode: the panel runs each action itself and answers when it is done"


def translate(exc: GatewayError) -> PanelError:
    """Map the gateway's error hierarchy onto HTTP-shaped panel errors, by the error's kind."""
    if isinstance(exc, ConfirmationRequired):
        return ConfirmationNeeded(str(exc), exc.token)
    return for_kind(exc.kind, str(exc))


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except GatewayError as exc:
        raise translate(exc) from exc


class LegacyBackend:
    """The same operations, run in this process with the Docker socket; counted as ``status_panel``."""

    control_plane = ControlPlane.STATUS_PANEL
    legacy = True
    tasks = False

    def __init__(
        self, operations: ComposeOperations, *, audit: AuditLog | None = None, caller: str = "status_panel"
    ) -> None:
        self.operations = operations
        self.audit = audit
        self.caller = caller

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            self.operations.close()
            if self.audit is not None:
                self.audit.close()

    async def list_stacks(self) -> StackList:
        with _translated():
            return await self.operations.list_stacks()

    async def ps(self, project: str, host: str | None = None) -> PsResult:
        if host not in (None, "local"):
            raise BadRequest(f"legacy mode runs on this host's engine only, not on '{host[:63]}'")
        with _translated():
            return await self.operations.ps(project)

    async def logs(self, call: LogsCall) -> LogsResult:
        with _translated():
            return await self.operations.logs(**call.arguments())

    async def action(self, call: ActionCall) -> ActionResult:
        # No confirmation tokens here: policy.confirm governs the gateway's tools, and in legacy mode
        # the panel's own dialog, which shows the plan, is the confirmation.
        ops, action, arguments = self.operations, call.action, call.arguments()
        caller, on_behalf_of = self.caller, call.on_behalf_of
        with _translated():
            if action == "down":
                return await ops.down(**arguments, caller=caller, on_behalf_of=on_behalf_of)
            if action == "up":
                return await ops.up(**arguments, caller=caller, on_behalf_of=on_behalf_of)
            return await ops.service_action(action, **arguments, caller=caller, on_behalf_of=on_behalf_of)

    async def plan(self, project: str) -> PlanResult:
        with _translated():
            return await self.operations.planner.plan(project)

    async def versions(self, project: str) -> VersionList:
        with _translated():
            return await self.operations.planner.versions(project)

    async def rollback(self, call: RollbackCall) -> DeployResult:
        with _translated():
            return await self.operations.deployer.rollback(
                **call.arguments(), caller=self.caller, on_behalf_of=call.on_behalf_of
            )

    async def approvals(self) -> list[ApprovalInfo]:
        return []

    async def approval(self, approval_id: str) -> ApprovalInfo:
        raise NotFound(_NO_APPROVALS)

    async def decide(self, approval_id: str, *, approve: bool, on_behalf_of: str) -> ApprovalInfo:
        raise BadRequest(_NO_APPROVALS)

    async def compose_agent_status(self) -> str:
        return "disabled"

    async def metrics(self) -> dict[str, Any]:
        merged = merge_metrics(self.operations.metrics.snapshot())
        merged["compose_agent_reachable"] = None
        return merged

    # In-process actions answer when they are done; there are no tasks to follow.

    async def start_action(self, call: ActionCall) -> TaskView:
        raise NotFound(_NO_TASKS)

    async def start_rollback(self, call: RollbackCall) -> TaskView:
        raise NotFound(_NO_TASKS)

    async def task(self, task_id: str, on_behalf_of: str | None) -> TaskView:
        raise NotFound(_NO_TASKS)

    async def cancel_task(self, task_id: str, on_behalf_of: str | None) -> TaskView:
        raise NotFound(_NO_TASKS)
