"""The ``tasks/*`` requests, and the extension that serves them and intercepts ``tools/call``.

One handler per method serves both revisions where both define it: ``tasks/get`` and ``tasks/cancel``.
``tasks/result`` and ``tasks/list`` exist on 2025-11-25 only (the extension inlines the result in
``tasks/get``, and has no listing); ``tasks/update`` on the extension only.

Every request names a task by its id and is answered only for the task's owner. Another caller's
task, an expired one and one that never existed get the same answer (``-32602``, not found), so a
task's existence does not leak either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CallToolRequestParams,
    CancelTaskRequestParams,
    GetTaskPayloadRequestParams,
    GetTaskRequestParams,
    PaginatedRequestParams,
    ProgressNotification,
    ProgressNotificationParams,
    RequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from ...errors import GatewayError
from ...tasks import TaskRecord
from .calls import Caller, TaskCalls, caller_of_request
from .runs import Run, Runner
from .wire import LEGACY_VERSION, TASKS_EXTENSION, legacy_payload, legacy_status, legacy_task, modern_task

__all__ = ["TaskMethods", "TasksExtension", "UpdateTaskRequestParams"]

_BOTH = frozenset({LEGACY_VERSION, *MODERN_PROTOCOL_VERSIONS})
_LEGACY = frozenset({LEGACY_VERSION})
_MODERN = frozenset(MODERN_PROTOCOL_VERSIONS)
_NOT_FOUND = (
    "Failed to retrieve task: Task not found (a task is kept for its time to live, and only the caller "
    "that created it can see it)"
)


class UpdateTaskRequestParams(RequestParams):
    """``tasks/update`` (the extension): answers to input requests a task is waiting for."""

    task_id: str
    input_responses: dict[str, Any] | None = None


class _ResultWaiter:
    """A tasks/result request blocked on a running task: the task's progress rides this request's stream."""

    def __init__(self, ctx: ServerRequestContext[Any, Any], run: Run) -> None:
        self.ctx = ctx
        self.run = run

    async def progress(self, progress: float, message: str | None) -> None:
        token = self.run.progress_token
        if token is None:
            return
        params = ProgressNotificationParams(progress_token=token, progress=progress, message=message)
        await self.ctx.session.send_notification(ProgressNotification(params=params), self.ctx.request_id)

    async def ended(self, run: Run) -> None:
        return None


class TaskMethods:
    """The handlers, over one runner's tasks."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.tasks = runner.tasks

    def bindings(self) -> list[MethodBinding]:
        return [
            MethodBinding("tasks/get", GetTaskRequestParams, self.get, protocol_versions=_BOTH),
            MethodBinding("tasks/cancel", CancelTaskRequestParams, self.cancel, protocol_versions=_BOTH),
            MethodBinding("tasks/result", GetTaskPayloadRequestParams, self.result, protocol_versions=_LEGACY),
            MethodBinding("tasks/list", PaginatedRequestParams, self.list, protocol_versions=_LEGACY),
            MethodBinding("tasks/update", UpdateTaskRequestParams, self.update, protocol_versions=_MODERN),
        ]

    def _caller(self, ctx: ServerRequestContext[Any, Any]) -> Caller:
        try:
            return caller_of_request(ctx)
        except GatewayError as exc:
            raise MCPError(INVALID_PARAMS, str(exc)) from None

    def _task(self, ctx: ServerRequestContext[Any, Any], task_id: str) -> tuple[Caller, TaskRecord]:
        caller = self._caller(ctx)
        record = self.tasks.get(caller.owner, task_id)
        if record is None:
            raise MCPError(INVALID_PARAMS, _NOT_FOUND)
        return caller, record

    def _run(self, record: TaskRecord) -> Run:
        run = self.runner.by_task(record.task_id)
        if run is None:
            raise MCPError(
                INVALID_PARAMS,
                f"task {record.task_id} runs in another gateway process (pid {record.pid}) sharing this state "
                "folder; ask that gateway",
            )
        return run

    async def get(self, ctx: ServerRequestContext[Any, Any], params: GetTaskRequestParams) -> dict[str, Any]:
        _, record = self._task(ctx, params.task_id)
        return legacy_task(record) if ctx.protocol_version == LEGACY_VERSION else modern_task(record)

    async def result(self, ctx: ServerRequestContext[Any, Any], params: GetTaskPayloadRequestParams) -> dict[str, Any]:
        """The call's own result once the task has ended; until then, this request waits (with progress)."""
        _, record = self._task(ctx, params.task_id)
        if not record.terminal:
            run = self._run(record)
            run.waiting += 1
            try:
                with run.follow(_ResultWaiter(ctx, run)):
                    await run.done.wait()
            finally:
                run.waiting -= 1
        return legacy_payload(record)

    async def list(self, ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams) -> dict[str, Any]:
        caller = self._caller(ctx)
        try:
            records, cursor = self.tasks.page(caller.owner, params.cursor)
        except ValueError:
            raise MCPError(INVALID_PARAMS, "invalid cursor: pass the nextCursor of the previous page") from None
        answer: dict[str, Any] = {"tasks": [legacy_task(record) for record in records]}
        if cursor is not None:
            answer["nextCursor"] = cursor
        return answer

    async def cancel(self, ctx: ServerRequestContext[Any, Any], params: CancelTaskRequestParams) -> dict[str, Any]:
        """Stop the task's call, and with it its Compose process group; the stack stays as Compose left it."""
        caller, record = self._task(ctx, params.task_id)
        legacy = ctx.protocol_version == LEGACY_VERSION
        if record.terminal:
            if legacy:
                raise MCPError(
                    INVALID_PARAMS, f"Cannot cancel task: already in terminal status '{legacy_status(record)}'"
                )
            return {}
        await self.runner.cancel(self._run(record), by=f"tasks/cancel from {caller.owner}")
        return legacy_task(record) if legacy else {}

    async def update(self, ctx: ServerRequestContext[Any, Any], params: UpdateTaskRequestParams) -> dict[str, Any]:
        # A detached call never waits for input, so no answer is ever outstanding: each is ignored.
        self._task(ctx, params.task_id)
        return {}


class TasksExtension(Extension):
    """``io.modelcontextprotocol/tasks``: the ``tasks/*`` methods, and tasks and keys for the write tools."""

    identifier = TASKS_EXTENSION

    def __init__(self, calls: TaskCalls, handlers: TaskMethods) -> None:
        self.calls = calls
        self.handlers = handlers

    def methods(self) -> Sequence[MethodBinding]:
        return self.handlers.bindings()

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        return await self.calls.intercept(params, ctx, call_next)
