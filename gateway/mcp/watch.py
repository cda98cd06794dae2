"""Watches stacks come, go and change state, and tells the notifier.

Two sources: the Engine's event stream (containers of compose projects being created, started,
stopped, removed, changing health) and the stacks dir (folders added or removed, which the Engine
knows nothing about). The stream is followed in a worker thread, because docker-py blocks; the
stacks dir is re-listed every few seconds, which is one ``scandir``.

An event for a project marks its status resource updated; a change in the set of stack names marks
the resource list changed. Both are level triggers: the first event is sent at once, and the burst
that may follow it (``up`` of ten services) once more at the end of a short window, not once per
container.

Each event is first told to the catalog's one freshness call
(:meth:`~gateway.catalog.StackCatalog.stack_changed`), which tells the
:class:`~gateway.engine.client.Engine`; each time the stream opens or drops the engine hears it too,
so that nothing kept for ``ps`` outlives an event that reached the gateway. A stack folder that
comes or goes is told the same way. The stream is followed on the event loop, over the engine's own
connection (:meth:`~gateway.engine.client.Engine.events`): the same transport as every read, a
Unix socket, TLS or SSH.

Nothing the engine or the file system does stops the watching: a failed listing (the engine down,
no file descriptor left) is logged and tried again at the next rescan, a notification that cannot be
sent is dropped, and a stream that cannot be opened is retried with a growing delay (up to
:data:`_RECONNECT_MAX_S`). What could still escape :meth:`StackWatcher.run` is caught by the
supervisor the entry point runs it under (:func:`gateway.mcp.health.supervise`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream

from ..backoff import Backoff
from ..engine.containers import PROJECT_LABEL
from ..operations import ComposeOperations
from .notify import Notifier
from .resources import stack_names, status_uri

__all__ = ["StackWatcher", "STATE_ACTIONS"]

logger = logging.getLogger(__name__)

# Container events that change what ps shows. "exec_*" and "attach" are frequent and change nothing.
STATE_ACTIONS = frozenset(
    {"create", "start", "restart", "stop", "die", "kill", "pause", "unpause", "destroy", "rename", "oom"}
)
_RECONNECT_DELAY_S = 1.0
_RECONNECT_MAX_S = 30.0


class StackWatcher:
    """Follows the engine and the stacks dir for as long as :meth:`run` runs."""

    def __init__(
        self,
        ops: ComposeOperations,
        notifier: Notifier,
        *,
        rescan_interval: float = 2.0,
        coalesce: float = 0.2,
    ) -> None:
        self.ops = ops
        self.notifier = notifier
        self.rescan_interval = rescan_interval
        self.coalesce = coalesce
        self._names: set[str] | None = None
        self._closed = threading.Event()
        self._scope: anyio.CancelScope | None = None
        self._loop_thread: int | None = None
        self._token: Any = None
        #: Set while the Engine's event stream is open (tests wait on it before acting).
        self.connected = threading.Event()

    async def run(self) -> None:
        """Watch until cancelled, or until :meth:`close`."""
        send, receive = anyio.create_memory_object_stream[str](1024)
        self._names = await self._stack_names()
        self._closed.clear()
        self._loop_thread = threading.get_ident()
        self._token = anyio.lowlevel.current_token()
        try:
            with anyio.CancelScope() as self._scope:
                if self._closed.is_set():
                    return
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._rescan_forever)
                    tg.start_soon(self._notify_forever, receive)
                    try:
                        await self._follow(send)
                    finally:
                        tg.cancel_scope.cancel()
        finally:
            self._closed.set()
            self.connected.clear()
            self.ops.engine.events_followed(False)
            send.close()

    def close(self) -> None:
        """Stop following the Engine, and make :meth:`run` return; safe from any thread."""
        self._closed.set()
        scope = self._scope
        if scope is None:
            return
        if threading.get_ident() == self._loop_thread:
            scope.cancel()
        else:
            try:
                anyio.from_thread.run_sync(scope.cancel, token=self._token)
            except RuntimeError:
                pass  # the loop is gone, and run() with it

    async def rescan(self) -> None:
        """Compare the stack names with the last look, and say so when they changed."""
        names = await self._stack_names()
        if names is None:
            return
        previous, self._names = self._names, names
        if previous is not None and names != previous:
            logger.info("stacks changed: %s", _describe(previous, names))
            for name in previous ^ names:
                self.ops.catalog.stack_changed(name)
            await self._tell("resources/list_changed", self.notifier.list_changed())

    async def _stack_names(self) -> set[str] | None:
        """The stack names now, or None when they cannot be listed (tried again at the next rescan)."""
        try:
            return {name for name, _ in await stack_names(self.ops)}
        except Exception as exc:  # noqa: BLE001 - an engine error, EMFILE from scandir: all the same here
            logger.debug("cannot list stacks: %r", exc)
            return None

    @staticmethod
    async def _tell(what: str, sending: Any) -> None:
        try:
            await sending
        except Exception as exc:  # noqa: BLE001 - a lost notification must not end the watching
            logger.debug("could not send %s: %r", what, exc)

    async def _rescan_forever(self) -> None:
        while True:
            await anyio.sleep(self.rescan_interval)
            await self.rescan()

    async def _notify_forever(self, receive: anyio.abc.ObjectReceiveStream[str]) -> None:
        async with receive:
            async for project in receive:
                await self._notify({project})
                # What follows within a short window is sent once at its end: one `up` is many
                # container events, and a host needs the last state, not every step.
                pending: set[str] = set()
                with anyio.move_on_after(self.coalesce):
                    async for more in receive:
                        pending.add(more)
                if pending:
                    await self._notify(pending)

    async def _notify(self, projects: set[str]) -> None:
        for name in sorted(projects):
            await self._tell("resources/updated", self.notifier.updated(status_uri(name)))
        # A created or destroyed container may be the first or last of a project.
        await self.rescan()

    async def _follow(self, send: MemoryObjectSendStream[str]) -> None:
        """Follow the engine's events until closed, reconnecting after a pause when the stream drops.

        Each event of a compose project's container goes to the engine first (its kept listing is
        stale), then to the notifier; the engine also hears when the stream opens and drops.
        """
        engine = self.ops.engine
        backoff = Backoff(_RECONNECT_DELAY_S, _RECONNECT_MAX_S)
        while not self._closed.is_set():
            opened: float | None = None
            try:
                async with engine.events({"type": ["container"], "label": [PROJECT_LABEL]}) as events:
                    opened = time.monotonic()
                    engine.events_followed(True)
                    self.connected.set()
                    async for event in events:
                        project = _project_of(event)
                        if project is None:
                            continue
                        # What is kept about the stack goes first: a ps after this line must ask the engine.
                        self.ops.catalog.stack_changed(
                            project, container=_container_of(event), action=_action_of(event)
                        )
                        try:
                            send.send_nowait(project)
                        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                            pass  # a backlog this deep is refetched by everyone anyway
            except Exception as exc:  # noqa: BLE001 - whatever broke the stream, the cure is to reconnect
                if opened is not None:
                    logger.debug("Engine events stream dropped: %r", exc)
                else:
                    # One warning per outage, not one per try.
                    logger.log(
                        logging.WARNING if backoff.failures == 0 else logging.DEBUG,
                        "cannot follow Engine events (%s); stack change notifications wait until it answers",
                        exc,
                    )
            finally:
                if opened is not None:
                    engine.events_followed(False)  # first: listings kept from here on could go stale unseen
                    self.connected.clear()
            if opened is not None and time.monotonic() - opened > _RECONNECT_MAX_S:
                backoff.reset()  # it was followed for a while: this is a new drop, not the same outage
            # A stream that drops as soon as it opens (a proxy that cuts it) is retried ever more slowly.
            await anyio.sleep(backoff.next())


def _action_of(event: dict[str, Any]) -> str:
    return str(event.get("Action") or event.get("status") or "")


def _container_of(event: dict[str, Any]) -> str | None:
    container = (event.get("Actor") or {}).get("ID") or event.get("id")
    return str(container) if container else None


def _project_of(event: dict[str, Any]) -> str | None:
    action = _action_of(event)
    # "health_status: healthy" and friends carry the new health after a colon.
    if action.split(":", 1)[0] not in STATE_ACTIONS and not action.startswith("health_status"):
        return None
    attributes = (event.get("Actor") or {}).get("Attributes") or {}
    project = attributes.get(PROJECT_LABEL)
    return str(project) if project else None


def _describe(before: set[str], after: set[str]) -> str:
    added, removed = sorted(after - before), sorted(before - after)
    parts = ([f"+{', +'.join(added)}"] if added else []) + ([f"-{', -'.join(removed)}"] if removed else [])
    return " ".join(parts)
