"""The panel's long actions as gateway tasks: started with a handle, followed by polling ``tasks/get``.

The panel's MCP session speaks 2026-07-28, where tasks are the ``io.modelcontextprotocol/tasks``
extension: the panel declares it (:class:`PanelTasks`) and the gateway then answers a write tool
with a task handle at once. The browser follows the task through the panel
(``GET /api/v1/tasks/{id}``), so a long ``up --wait`` shows its progress instead of a spinner, and
no request (browser, proxy, or the panel's own) has to stay open for as long as Compose works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, cast

import anyio
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp_types import CallToolResult, GetTaskRequestParams, Request, RequestParamsMeta, Result
from pydantic import TypeAdapter

from .errors import ActionFailed, GatewayUnavailable

__all__ = [
    "TASKS_EXTENSION",
    "CreatedTask",
    "PanelTasks",
    "TaskView",
    "cancel_task",
    "follow_task",
    "get_task",
    "run_as_task",
]

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
_ANY = TypeAdapter(dict[str, Any])
_POLL_FIRST_S = 0.2
_POLL_MAX_S = 1.0


class CreatedTask(Result):
    """The gateway's answer to a write tool when a task was made: its handle."""

    result_type: Literal["task"] = "task"
    task_id: str
    status: str
    status_message: str | None = None


class _GetTask(Request[GetTaskRequestParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: GetTaskRequestParams
    name_param = "taskId"


class _CancelTask(Request[GetTaskRequestParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"
    params: GetTaskRequestParams
    name_param = "taskId"


@dataclass(frozen=True)
class TaskView:
    """A task as ``tasks/get`` shows it: ``working``, ``completed`` (with its result), ``failed`` or ``cancelled``."""

    id: str
    status: str
    message: str | None = None
    result: CallToolResult | None = None
    error: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status != "working" and self.status != "input_required"

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> TaskView:
        result = data.get("result")
        error = data.get("error")
        return cls(
            id=str(data.get("taskId", "")),
            status=str(data.get("status", "failed")),
            message=data.get("statusMessage") if isinstance(data.get("statusMessage"), str) else None,
            result=CallToolResult.model_validate(result, by_name=False) if isinstance(result, dict) else None,
            error=str(error.get("message")) if isinstance(error, dict) else None,
        )


def _params(task_id: str, meta: RequestParamsMeta | None) -> GetTaskRequestParams:
    return GetTaskRequestParams(task_id=task_id, _meta=meta)


async def get_task(session: Any, task_id: str, meta: RequestParamsMeta | None, timeout: float) -> TaskView:
    """``tasks/get``, as the person in ``meta`` (their tasks only).

    Raises:
        MCPError: the gateway does not know the task for this caller, or did not answer in time.
    """
    data = await session.send_request(
        _GetTask(params=_params(task_id, meta)), _ANY, request_read_timeout_seconds=timeout
    )
    return TaskView.from_wire(data)


async def cancel_task(session: Any, task_id: str, meta: RequestParamsMeta | None, timeout: float) -> None:
    """``tasks/cancel``: the gateway stops the Compose process group; the stack stays as Compose left it.

    Raises:
        MCPError: as :func:`get_task`.
    """
    await session.send_request(_CancelTask(params=_params(task_id, meta)), _ANY, request_read_timeout_seconds=timeout)


async def follow_task(
    session: Any, task_id: str, meta: RequestParamsMeta | None, *, timeout: float, deadline: float
) -> TaskView:
    """Poll ``tasks/get`` until the task ends: quickly at first, then once a second.

    Raises:
        TimeoutError: it still worked after ``deadline`` seconds (it goes on running in the gateway).
        MCPError: as :func:`get_task`.
    """
    pause = _POLL_FIRST_S
    with anyio.fail_after(deadline if math.isfinite(deadline) else None):
        while True:
            view = await get_task(session, task_id, meta, timeout)
            if view.terminal:
                return view
            await anyio.sleep(pause)
            pause = min(pause * 2, _POLL_MAX_S)


async def run_as_task(
    session: Any, tool: str, args: dict[str, Any], meta: RequestParamsMeta | None, timeout: float, deadline: float
) -> CallToolResult:
    """A long action, waited for: started as a task and polled until it ends, each poll with its own ``timeout``.

    Raises:
        GatewayUnavailable: it still runs after ``deadline`` seconds (it goes on in the gateway).
        ActionFailed: the task failed (its gateway stopped, say) or was cancelled.
        MCPError: the gateway refused the call or a poll.
    """
    answer = await session.call_tool(tool, args, read_timeout_seconds=timeout, meta=meta, allow_claimed=True)
    if not isinstance(answer, CreatedTask):
        return cast(CallToolResult, answer)
    try:
        view = await follow_task(session, answer.task_id, meta, timeout=timeout, deadline=deadline)
    except TimeoutError:
        raise GatewayUnavailable(
            f"{tool} still runs in the compose-agent after {math.ceil(deadline)}s (task {answer.task_id}); "
            "check the stack"
        ) from None
    if view.result is not None:
        return view.result
    raise ActionFailed(view.error or view.message or f"{tool} ended {view.status}")


class PanelTasks(ClientExtension):
    """Declares the tasks extension on the panel's requests; a plain ``call_tool`` is resolved by following."""

    identifier = TASKS_EXTENSION

    def claims(self) -> list[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=CreatedTask, resolve=self._resolve)]

    async def _resolve(self, created: CreatedTask, ctx: ClaimContext) -> CallToolResult:
        timeout = ctx.read_timeout_seconds or 10.0
        view = await follow_task(ctx.session, created.task_id, None, timeout=timeout, deadline=math.inf)
        if view.result is not None:
            return view.result
        raise RuntimeError(view.error or view.message or f"task {view.id} ended {view.status}")
