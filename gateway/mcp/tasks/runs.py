"""Detached write calls: a ``tools/call`` that runs on in the gateway's own task group.

A task, and a call with an idempotency key, must outlive the request that started it: the client
may stop waiting (60 s in several SDKs), cancel, or hang up and send the same call again. So the
call runs here, in :class:`Runner`'s task group, and the requests that care about it *follow* it:
they receive its progress while they wait, and its result when it ends. A follower that goes
away leaves the call running.

The call sees its client's session through :class:`DetachedSession`: the same client, but with no
back-channel of its own. Its progress goes to the run (and so to whoever follows it), and it
cannot ask the person anything mid-run: a policy confirmation then comes back as a token, as for
any client that cannot elicit.

A run ends ``completed`` (a result, an error result too), ``cancelled`` (``tasks/cancel``: the
Compose process group is stopped, see :mod:`gateway.compose.cli`), ``interrupted`` (the gateway
stopped) or with a protocol error. How each maps onto the task and the key is :class:`Runner`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import anyio
import anyio.abc
from anyio import to_thread
from mcp.server.context import CallNext, ServerRequestContext
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError, NoBackChannelError
from mcp_types import INTERNAL_ERROR, CallToolResult, ClientCapabilities, InputRequiredResult

from ...audit import call_tags
from ...idempotency import KeyLedger, KeyRecord
from ...tasks import TaskRecord, TaskStore, error_payload
from .outcomes import EngineNow, finished_message, key_outcome

__all__ = ["DetachedSession", "Follower", "Run", "Runner"]

logger = logging.getLogger(__name__)

# A cancelled Compose run stops within compose.py's TERM-then-KILL grace (5 s) plus its outcome line.
_CANCEL_WAIT_S = 15.0


class Follower(Protocol):
    """Someone who follows a run: a waiting request, a task's client."""

    async def progress(self, progress: float, message: str | None) -> None: ...

    async def ended(self, run: Run) -> None: ...


@dataclass(eq=False)
class Run:
    """One detached write call, while it runs and until every follower has read its end."""

    owner: str
    tool: str
    project: str | None
    task: TaskRecord | None = None
    key: KeyRecord | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    result: CallToolResult | None = None
    error: MCPError | None = None
    progress: float = 0.0
    message: str | None = None
    cancelled_by: str | None = None
    # The call has returned (its result is being kept): too late to cancel it.
    returned: bool = False
    # 2025-11-25: the token the task's tools/call carried; its progress keeps using it.
    progress_token: str | int | None = None
    followers: list[Follower] = field(default_factory=list)
    # Requests blocked in tasks/result: while one waits, progress rides its stream.
    waiting: int = 0

    async def report(self, progress: float, total: float | None, message: str | None) -> None:
        """The call's progress (one Compose event): kept as its status, and passed to every follower."""
        self.progress, self.message = progress, message
        if self.task is not None:
            self.task.touch(message)
        for follower in list(self.followers):
            try:
                await follower.progress(progress, message)
            except Exception as exc:  # noqa: BLE001 - a follower gone deaf must not stop the call
                logger.debug("a follower of %s missed progress: %r", self.tool, exc)

    @contextmanager
    def follow(self, follower: Follower) -> Iterator[None]:
        """Receive the run's progress within the block."""
        self.followers.append(follower)
        try:
            yield
        finally:
            self.followers.remove(follower)


class DetachedSession(ServerSession):
    """The client's session as a detached call sees it: progress goes to the run, and there is no back-channel.

    Everything else (the client's protocol version, its info, the standalone channel) is the
    client's own session's: the base class's state is not copied but looked up there.
    """

    def __init__(self, wrapped: ServerSession, run: Run) -> None:
        # Deliberately not ServerSession.__init__: every attribute not set here is the wrapped session's.
        self._wrapped = wrapped
        self._run = run

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)

    @property
    def client_capabilities(self) -> ClientCapabilities | None:
        """The client's capabilities without those that need a back-channel (asking the person, sampling)."""
        capabilities = self._wrapped.client_capabilities
        if capabilities is None:
            return None
        return capabilities.model_copy(update={"elicitation": None, "sampling": None, "roots": None})

    @property
    def can_send_request(self) -> bool:
        return False

    async def send_request(self, request: Any, result_type: Any, *args: Any, **kwargs: Any) -> Any:
        raise NoBackChannelError(str(getattr(request, "method", "request")))

    async def report_progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        await self._run.report(progress, total, message)

    async def send_notification(self, notification: Any, related_request_id: Any = None) -> None:
        await self._notify(notification, request_scoped=related_request_id is not None)

    async def _notify(self, notification: Any, *, request_scoped: bool) -> None:
        # A request-scoped message (a log line) has no request left to ride; the progress carries the news.
        if not request_scoped:
            await self._wrapped.send_notification(notification)


class Runner:
    """Runs detached calls in a task group of its own, for the life of the gateway (:meth:`run`)."""

    def __init__(self, tasks: TaskStore, keys: KeyLedger, engine_now: EngineNow) -> None:
        self.tasks = tasks
        self.keys = keys
        self.engine_now = engine_now
        self._group: anyio.abc.TaskGroup | None = None
        self._by_task: dict[str, Run] = {}
        self._by_key: dict[str, Run] = {}

    @property
    def accepting(self) -> bool:
        """True while :meth:`run` runs: a detached call can start."""
        return self._group is not None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the detached calls until cancelled; a call still running then ends ``interrupted``."""
        async with anyio.create_task_group() as group:
            self._group = group
            task_status.started()
            try:
                group.start_soon(self._explain_recovered)
                await anyio.sleep_forever()
            finally:
                self._group = None

    def by_task(self, task_id: str) -> Run | None:
        return self._by_task.get(task_id)

    def by_key(self, record: KeyRecord) -> Run | None:
        return self._by_key.get(record.name)

    def register(self, run: Run) -> None:
        """Make ``run`` findable by its task and key at once, before it starts: a call sent again joins it."""
        if run.task is not None:
            self._by_task[run.task.task_id] = run
        if run.key is not None:
            self._by_key[run.key.name] = run

    def attach_task(self, run: Run, task: TaskRecord) -> None:
        """Give a running call (started without one) the task a later request asked for."""
        run.task = task
        self._by_task[task.task_id] = run

    def abandon(self, run: Run, result: CallToolResult) -> None:
        """End a registered run that never started (its records could not be written)."""
        run.result = result
        self._unregister(run)
        run.done.set()

    def start(self, run: Run, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> None:
        """Start a registered ``run`` now; the caller has saved its task and key records.

        Raises:
            RuntimeError: not accepting (see :attr:`accepting`); the caller checked.
        """
        if self._group is None:
            raise RuntimeError("the runner is not running")
        self._group.start_soon(self._execute, run, ctx, call_next)

    def _unregister(self, run: Run) -> None:
        # Only this run's entries: a key given back may already name the next call.
        if run.task is not None and self._by_task.get(run.task.task_id) is run:
            del self._by_task[run.task.task_id]
        if run.key is not None and self._by_key.get(run.key.name) is run:
            del self._by_key[run.key.name]

    async def cancel(self, run: Run, by: str) -> None:
        """Stop ``run`` (its Compose process group with it) and wait, bounded, until it has ended.

        A call that has already returned is let finish: its task ends with its own result.
        """
        if not run.returned:
            run.cancelled_by = by
            stopping = f"cancelled by {by}; stopping"
            if run.task is not None and self.tasks.finish(run.task, "cancelled", message=stopping):
                await self._save_task(run.task)
            run.scope.cancel()
        with anyio.move_on_after(_CANCEL_WAIT_S):
            await run.done.wait()

    # -- one call -----------------------------------------------------------------------------------

    async def _execute(self, run: Run, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> None:
        detached = replace(ctx, session=DetachedSession(ctx.session, run))
        tags: dict[str, Any] = {}
        if run.key is not None:
            tags.update(idempotency_key=run.key.key, attempt=run.key.attempts)
        if run.task is not None:
            tags["task"] = run.task.task_id
        try:
            with call_tags(**tags), run.scope:
                try:
                    run.result = _as_result(await call_next(detached))
                except MCPError as exc:
                    run.error = exc
                except Exception:
                    logger.exception("%s on %r failed inside the gateway", run.tool, run.project)
                    run.error = MCPError(INTERNAL_ERROR, f"{run.tool} failed inside the gateway; see its log")
            run.returned = True
            if run.scope.cancelled_caught:
                await self._cancelled(run)
            else:
                await self._finished(run)
        except anyio.get_cancelled_exc_class():
            # Not a tasks/cancel: the runner itself is ending, so the gateway stops.
            with anyio.CancelScope(shield=True):
                await self._interrupted(run, "the gateway stopped while this call ran")
            raise
        finally:
            run.done.set()
            self._unregister(run)
            for follower in list(run.followers):
                with anyio.CancelScope(shield=True):
                    await _tell_ended(follower, run)

    async def _finished(self, run: Run) -> None:
        payload = _payload(run)
        if run.key is not None:
            action = key_outcome(run.result, run.error)
            if action == "interrupt":
                self.keys.interrupt(run.key, finished_message(run.tool, run.result, run.error))
                await self._save_key(run.key)
            elif action == "release":
                if self.keys.release(run.key):
                    await self._save_key(run.key)
            else:
                self.keys.finish(run.key, payload or {})
                await self._save_key(run.key)
        if run.task is not None:
            message = finished_message(run.tool, run.result, run.error)
            if run.task.state == "cancelled":
                # Cancelled as the call finished anyway: it stays cancelled, and says how the call ended.
                run.task.result, run.task.message = payload, f"{run.task.message}; but it had finished: {message}"
            elif run.error is not None:
                error = {"code": run.error.code, "message": run.error.message}
                self.tasks.finish(run.task, "failed", error=error, message=message)
            elif key_outcome(run.result, None) == "interrupt":
                self.tasks.finish(run.task, "interrupted", result=payload, message=message)
            else:
                self.tasks.finish(run.task, "completed", result=payload, message=message)
            await self._save_task(run.task)

    async def _cancelled(self, run: Run) -> None:
        engine = await self.engine_now(run.project)
        text = (
            f"{run.tool} on '{run.project}' was cancelled ({run.cancelled_by or 'cancelled'}): its docker compose "
            "process group was stopped, and the stack is left as Compose left it; nothing was undone. "
            f"The engine now shows: {engine}"
        )
        payload = error_payload(text, "cancelled")
        run.result = CallToolResult.model_validate(payload, by_name=False)
        if run.key is not None:
            self.keys.finish(run.key, payload)
            await self._save_key(run.key)
        if run.task is not None:
            # tasks/cancel made it cancelled already; now it says how the stack was left.
            if not self.tasks.finish(run.task, "cancelled", result=payload, message=text):
                run.task.result, run.task.message = payload, text
            await self._save_task(run.task)

    async def _interrupted(self, run: Run, reason: str) -> None:
        if run.key is not None:
            self.keys.interrupt(run.key, reason)
            await self._save_key(run.key)
        if run.task is not None:
            self.tasks.interrupt(run.task, reason)
            await self._save_task(run.task)
        if run.task is not None and run.task.result is not None:
            run.result = CallToolResult.model_validate(run.task.result, by_name=False)
        else:
            run.result = CallToolResult.model_validate(error_payload(reason, "interrupted"), by_name=False)

    async def _explain_recovered(self) -> None:
        """Tasks a dead gateway left working were ended at start; add what the engine shows now."""
        for record in list(self.tasks.recovered):
            self.tasks.explain(record, await self.engine_now(record.project))
            await self._save_task(record)
        self.tasks.recovered.clear()

    async def _save_task(self, record: TaskRecord) -> None:
        await _save(self.tasks.save, record)

    async def _save_key(self, record: KeyRecord) -> None:
        await _save(self.keys.save, record)


async def _save(save: Callable[[Any], None], record: Any) -> None:
    """Write a record at the end of a call; a failure is logged (the call is done either way)."""
    try:
        await to_thread.run_sync(save, record)
    except Exception as exc:  # noqa: BLE001 - the deed is done; the log says what could not be kept
        logger.error("could not keep the end of a call in the state folder: %s", exc)


async def _tell_ended(follower: Follower, run: Run) -> None:
    try:
        await follower.ended(run)
    except Exception as exc:  # noqa: BLE001 - one deaf follower must not keep the others from hearing
        logger.debug("a follower of %s missed its end: %r", run.tool, exc)


def _as_result(result: Any) -> CallToolResult:
    """The handler's answer as a CallToolResult; a detached call cannot pause to ask the person."""
    if isinstance(result, CallToolResult):
        return result
    if isinstance(result, InputRequiredResult):
        text = "this call needs the person's answer mid-call; call it without a task (or send its confirm token)"
        return CallToolResult.model_validate(error_payload(text, "input_required"), by_name=False)
    return CallToolResult.model_validate(result, by_name=False)


def _payload(run: Run) -> dict[str, Any] | None:
    if run.result is None:
        return None
    dumped: dict[str, Any] = run.result.model_dump(by_alias=True, mode="json", exclude_none=True)
    dumped.pop("resultType", None)  # the answering era stamps its own
    return dumped
