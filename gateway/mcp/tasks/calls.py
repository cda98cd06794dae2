"""A write tool's call, when it asks for a task or carries an idempotency key.

Every other call goes on as before: synchronous, with progress, cancelled with its request. These
two run detached (:mod:`.runs`) and are followed:

- **a task**: asked for with ``task`` in the params (2025-11-25) or by declaring the
  ``io.modelcontextprotocol/tasks`` extension on the request (2026-07-28). The answer is the task's
  handle, at once; the call runs on.
- **an idempotency key**: the first call with it runs, and its request waits for it (with progress)
  as before; a call sent again with the same key and arguments joins it, or, once it has ended,
  gets its recorded result (:mod:`gateway.idempotency`). A request that stops waiting leaves the call
  running, so a client that timed out can send it again.

Tasks and keys belong to their **owner**: the token's principal (``compose_agent_token``, ``local``
on stdio), the person behind an OAuth token (``person:<name>``), or the person the status panel acts
for (``status_panel_token/<name>``). No one else can see, join or cancel them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol, cast

from anyio import to_thread
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.session import ServerSession
from mcp_types import (
    CallToolRequestParams,
    CallToolResult,
    ProgressNotification,
    ProgressNotificationParams,
    TaskStatusNotification,
    TaskStatusNotificationParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from ...audit import bounded_arguments
from ...errors import (
    ERROR_META_KEY,
    IDEMPOTENCY_META_KEY,
    GatewayError,
    IdempotencyConflict,
    PolicyViolation,
    ShuttingDown,
    StateUnavailable,
)
from ...idempotency import KeyRecord, fingerprint, valid_key
from ...tasks import MAX_WORKING_PER_OWNER, TaskRecord, error_payload
from ..access import acting_for, principal_of_request
from ..confirmation import audit_view
from .runs import Run, Runner
from .wire import LEGACY_VERSION, TASKS_EXTENSION, created, iso, legacy_task

__all__ = ["Caller", "TaskCalls", "TaskRequest", "caller_of_request", "requested_task"]

logger = logging.getLogger(__name__)


class RefusalAudit(Protocol):
    def __call__(
        self, tool: str, arguments: dict[str, Any], caller: str, reason: str, *, on_behalf_of: str | None = None
    ) -> None: ...


@dataclass(frozen=True)
class Caller:
    """Who sends a request: the principal's name and the person it acts for; ``owner`` is whose tasks it sees."""

    name: str
    person: str | None
    oauth: bool

    @property
    def owner(self) -> str:
        if self.oauth and self.person is not None:
            return f"person:{self.person}"
        return self.name if self.person is None else f"{self.name}/{self.person}"


def caller_of_request(ctx: ServerRequestContext[Any, Any]) -> Caller:
    """The caller behind a request.

    Raises:
        InvalidInput: the request's ``_meta`` names a person badly, or someone an OAuth token may not act for.
    """
    principal = principal_of_request(ctx)
    return Caller(principal.name, acting_for(principal, ctx.meta), principal.person is not None)


@dataclass(frozen=True)
class TaskRequest:
    """A request for a task: on which revision, for how long, and the progress token it carried."""

    version: str
    ttl_ms: int | None = None
    progress_token: str | int | None = None


def requested_task(params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any]) -> TaskRequest | None:
    """The task this tools/call asks for; None for a call that wants its result in the answer.

    Before 2025-11-25 the ``task`` field means nothing, and is ignored as the revision says.
    """
    if ctx.protocol_version == LEGACY_VERSION and params.task is not None:
        token = (ctx.meta or {}).get("progress_token")
        return TaskRequest(LEGACY_VERSION, params.task.ttl, token if isinstance(token, str | int) else None)
    if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        capabilities = ctx.session.client_capabilities
        if capabilities is not None and TASKS_EXTENSION in (capabilities.extensions or {}):
            return TaskRequest(ctx.protocol_version)
    return None


def _error(exc: GatewayError) -> CallToolResult:
    return CallToolResult.model_validate(error_payload(str(exc), exc.kind), by_name=False)


def keyed(result: CallToolResult, record: KeyRecord, call: str) -> CallToolResult:
    """``result``, saying what its key did: ``ran``, ``retried`` (after cut-short tries), ``joined``, ``replayed``."""
    info: dict[str, Any] = {
        "key": record.key,
        "call": call,
        "attempt": record.attempts,
        "first_call_at": iso(record.created_at),
    }
    if record.interrupted:
        info["interrupted"] = [{"started_at": iso(i["started_at"]), "reason": i["reason"]} for i in record.interrupted]
    return result.model_copy(update={"meta": {**(result.meta or {}), IDEMPOTENCY_META_KEY: info}})


class _RequestFollower:
    """A request waiting for a keyed call: the call's progress rides the request's own stream."""

    def __init__(self, session: ServerSession) -> None:
        self.session = session

    async def progress(self, progress: float, message: str | None) -> None:
        await self.session.report_progress(progress, None, message)

    async def ended(self, run: Run) -> None:
        return None


class _LegacyTaskFollower:
    """The client of a 2025-11-25 task, on its connection's standalone channel.

    Progress keeps the token of the task's tools/call, as the revision says; while a tasks/result
    request waits, its stream carries the progress instead. The end is a ``notifications/tasks/status``.
    """

    def __init__(self, session: ServerSession, run: Run) -> None:
        self.session = session
        self.run = run

    async def progress(self, progress: float, message: str | None) -> None:
        token = self.run.progress_token
        if token is None or self.run.waiting:
            return
        params = ProgressNotificationParams(progress_token=token, progress=progress, message=message)
        await self.session.send_notification(ProgressNotification(params=params))

    async def ended(self, run: Run) -> None:
        if run.task is not None:
            params = TaskStatusNotificationParams.model_validate(legacy_task(run.task), by_name=False)
            # Not in the SDK's notification union (the revision's tasks are types-only there); sent as it is.
            await self.session.send_notification(cast(Any, TaskStatusNotification(params=params)))


class TaskCalls:
    """The ``tools/call`` interceptor for the write tools (see the module's docstring)."""

    def __init__(self, runner: Runner, *, audit_refusal: RefusalAudit, write_tools: frozenset[str]) -> None:
        self.runner = runner
        self.tasks = runner.tasks
        self.keys = runner.keys
        self.audit_refusal = audit_refusal
        self.write_tools = write_tools

    async def intercept(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if params.name not in self.write_tools:
            return await call_next(ctx)
        arguments = params.arguments or {}
        key = valid_key(arguments.get("idempotency_key"))
        want = requested_task(params, ctx)
        if key is None and want is None:
            return await call_next(ctx)
        try:
            caller = caller_of_request(ctx)
        except GatewayError:
            return await call_next(ctx)  # the call refuses (and audits) the malformed _meta itself
        if not self.runner.accepting:
            stopping = ShuttingDown("the gateway is stopping and starts no more calls; retry once it is back")
            return self._refuse(params.name, arguments, caller, stopping)
        project = arguments.get("project") if isinstance(arguments.get("project"), str) else None
        host = arguments.get("host")
        if project is not None and isinstance(host, str) and host != "local":
            project = f"{host}/{project}"  # a task on another host names it: "edge/site"
        record: KeyRecord | None = None
        if key is not None:
            claim = self.keys.claim(caller.owner, key, params.name, fingerprint(params.name, arguments), project)
            record = claim.record
            if claim.action == "conflict":
                return self._conflict(params.name, arguments, caller, record)
            if claim.action == "replay":
                return await self._replay(record, want, caller)
            if claim.action == "join":
                joined = self.runner.by_key(record)
                if joined is None:
                    elsewhere = StateUnavailable(
                        f"the call with this idempotency_key runs in another gateway process (pid {record.pid}) "
                        "that shares this state folder; ask that gateway, or wait for it to end"
                    )
                    return self._refuse(params.name, arguments, caller, elsewhere)
                return await self._follow(joined, ctx, want, "joined")
        if want is not None and self.tasks.working(caller.owner) >= MAX_WORKING_PER_OWNER:
            if record is not None:
                self.keys.release(record)
            busy = PolicyViolation(
                f"{caller.owner} already has {MAX_WORKING_PER_OWNER} tasks running; wait for one to end "
                "(tasks/get) or cancel one (tasks/cancel)"
            )
            return self._refuse(params.name, arguments, caller, busy)
        run = Run(caller.owner, params.name, project, key=record, progress_token=want.progress_token if want else None)
        if want is not None:
            run.task = self.tasks.create(caller.owner, params.name, project, ttl_ms=want.ttl_ms, key=key)
            if record is not None:
                record.task_id = run.task.task_id
        self.runner.register(run)
        try:
            await to_thread.run_sync(self._save_new, run)
        except StateUnavailable as exc:
            if run.task is not None:
                self.tasks.forget(run.task)
            if record is not None:
                self.keys.release(record)
            self.runner.abandon(run, _error(exc))
            return self._refuse(params.name, arguments, caller, exc)
        if run.task is not None:
            logger.info("task %s: %s on %r for %s", run.task.task_id, run.tool, project, caller.owner)
        self.runner.start(run, ctx, call_next)
        return await self._follow(run, ctx, want, "retried" if record is not None and record.interrupted else "ran")

    def _save_new(self, run: Run) -> None:
        # Durable before the handle is handed out: a tasks/get for it then always resolves.
        if run.task is not None:
            self.tasks.save(run.task)
        if run.key is not None:
            self.keys.save(run.key)

    async def _follow(
        self, run: Run, ctx: ServerRequestContext[Any, Any], want: TaskRequest | None, call: str
    ) -> HandlerResult:
        if want is not None:
            task = run.task
            if task is None:
                # A call that began without a task, asked again for one.
                task = self.tasks.create(run.owner, run.tool, run.project, ttl_ms=want.ttl_ms)
                self.runner.attach_task(run, task)
                if run.key is not None:
                    run.key.task_id = task.task_id
                try:
                    await to_thread.run_sync(self._save_new, run)
                except StateUnavailable as exc:
                    return _error(exc)
            if want.version == LEGACY_VERSION and not run.done.is_set():
                if run.progress_token is None:
                    run.progress_token = want.progress_token
                run.followers.append(_LegacyTaskFollower(ctx.session, run))
            return created(want.version, task)
        with run.follow(_RequestFollower(ctx.session)):
            await run.done.wait()
        if run.error is not None:
            raise run.error
        result = run.result or _error(StateUnavailable(f"{run.tool} ended without a result"))
        return keyed(result, run.key, call) if run.key is not None else result

    async def _replay(self, record: KeyRecord, want: TaskRequest | None, caller: Caller) -> HandlerResult:
        stored = record.result or {}
        if want is None:
            return keyed(CallToolResult.model_validate(stored, by_name=False), record, "replayed")
        task: TaskRecord | None = self.tasks.get(caller.owner, record.task_id) if record.task_id else None
        if task is None:
            # The first call had no task (or it expired): this one is born finished, with the recorded result.
            task = self.tasks.create(caller.owner, record.tool, record.project, key=record.key)
            cancelled = (stored.get("_meta") or {}).get(ERROR_META_KEY) == "cancelled"
            replayed = "the recorded outcome of the first call with this idempotency_key"
            self.tasks.finish(task, "cancelled" if cancelled else "completed", result=stored, message=replayed)
            try:
                await to_thread.run_sync(self.tasks.save, task)
            except StateUnavailable as exc:
                return _error(exc)
        return created(want.version, task)

    def _conflict(self, tool: str, arguments: dict[str, Any], caller: Caller, record: KeyRecord) -> CallToolResult:
        on = f" on '{record.project}'" if record.project else ""
        reason = (
            f"the idempotency_key {record.key!r} was first used at {iso(record.created_at)} for {record.tool}{on} "
            f"with other arguments; a key names one call: send a new key for a different call"
        )
        if tool != record.tool:
            reason = reason.replace("with other arguments", f"(not {tool})")
        return self._refuse(tool, arguments, caller, IdempotencyConflict(reason))

    def _refuse(self, tool: str, arguments: dict[str, Any], caller: Caller, exc: GatewayError) -> CallToolResult:
        """A call refused here, before it ran: audited like every refusal, answered as an error result."""
        shown = bounded_arguments(audit_view(arguments))
        self.audit_refusal(tool, shown, caller.name, str(exc), on_behalf_of=caller.person)
        return _error(exc)
