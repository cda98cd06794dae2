"""Watches stacks come, go and change state, and tells the notifier.

Two sources: the Engine's event stream (containers of compose projects being created, started,
stopped, removed, changing health) and the stacks dir (folders added or removed, which the Engine
knows nothing about). The stream is followed in a worker thread, because docker-py blocks; the
stacks dir is re-listed every few seconds, which is one ``scandir``.

An event for a project marks its status resource updated; a change in the set of stack names marks
the resource list changed. Both are level triggers: the first event is sent at once, and the burst
that may follow it (``up`` of ten services) once more at the end of a short window, not once per
container.

Each event, and each time the stream opens or drops, is first told to the
:class:`~gateway.engine.client.Engine` on the event loop, so that the listings it keeps for ``ps`` never
outlive an event that reached the gateway.

Nothing the engine or the file system does stops the watching: a failed listing (the engine down,
no file descriptor left) is logged and tried again at the next rescan, a notification that cannot be
sent is dropped, and a stream that cannot be opened is retried with a growing delay (up to
:data:`_RECONNECT_MAX_S`). What could still escape :meth:`StackWatcher.run` is caught by the
supervisor the entry point runs it under (:func:`gateway.mcp.health.supervise`).

The stream is ``GET /events`` through the docker-py client's own HTTP session, streamed, rather than
the client's ``events()``: the stream that call returns cannot release its socket without reaching
into its private response. A plain streamed response can be shut from another thread
(``response.raw.shutdown()``, urllib3's way to end a blocked read) and closed, both public.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel

from ..backoff import Backoff
from ..engine.containers import PROJECT_LABEL
from ..errors import EngineUnavailable
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
        self._stream: Any = None
        self._stream_lock = threading.Lock()
        #: Set while the Engine's event stream is open (tests wait on it before acting).
        self.connected = threading.Event()

    async def run(self) -> None:
        """Watch until cancelled."""
        send, receive = anyio.create_memory_object_stream[str](1024)
        self._names = await self._stack_names()
        token = anyio.lowlevel.current_token()
        engine = self.ops.engine

        def on_loop(fn: Callable[..., None], *args: Any) -> None:
            # Run on the event loop, in the order events came; the follower waits for it.
            try:
                anyio.from_thread.run_sync(fn, *args, token=token)
            except RuntimeError:
                pass  # the loop is closing

        def followed(following: bool) -> None:
            if not (following and self._closed.is_set()):  # a late "open" after run() ended changes nothing
                engine.events_followed(following)

        def arrived(project: str, container_id: str | None, action: str) -> None:
            # The engine's kept listing goes first: a ps after this line must ask the engine.
            engine.container_changed(project, container_id, action)
            try:
                send.send_nowait(project)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # a backlog this deep is refetched by everyone anyway

        self._closed.clear()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._rescan_forever)
                tg.start_soon(self._notify_forever, receive)
                try:
                    await anyio.to_thread.run_sync(
                        self._follow,
                        functools.partial(on_loop, followed),
                        functools.partial(on_loop, arrived),
                        abandon_on_cancel=True,
                    )
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self.close()
            engine.events_followed(False)
            send.close()

    def close(self) -> None:
        """Stop following the Engine; safe from any thread."""
        self._closed.set()
        with self._stream_lock:
            if self._stream is not None:
                _shut(self._stream)

    async def rescan(self) -> None:
        """Compare the stack names with the last look, and say so when they changed."""
        names = await self._stack_names()
        if names is None:
            return
        previous, self._names = self._names, names
        if previous is not None and names != previous:
            logger.info("stacks changed: %s", _describe(previous, names))
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

    def _follow(self, followed: Callable[[bool], None], arrived: Callable[[str, str | None, str], None]) -> None:
        """Block in a worker thread until closed: say when the stream opens and drops (``followed``),
        and hand each relevant event's project, container id and action to ``arrived``."""
        backoff = Backoff(_RECONNECT_DELAY_S, _RECONNECT_MAX_S)
        while not self._closed.is_set():
            try:
                stream = _open_events(self.ops.engine.client)
            except Exception as exc:  # noqa: BLE001 - docker-py lets requests' errors through unwrapped
                delay = backoff.next()
                # One warning per outage, not one per try.
                logger.log(
                    logging.WARNING if backoff.failures == 1 else logging.DEBUG,
                    "cannot follow Engine events (%s); stack change notifications wait until it answers"
                    " (next try in %.0f s)",
                    exc,
                    delay,
                )
                self._closed.wait(delay)
                continue
            with self._stream_lock:
                self._stream = stream
                if self._closed.is_set():
                    _shut(stream)
            followed(True)
            self.connected.set()
            opened = time.monotonic()
            try:
                for event in _events(stream):
                    project = _project_of(event)
                    if project is not None:
                        arrived(project, _container_of(event), _action_of(event))
            except Exception as exc:  # noqa: BLE001 - whatever broke the stream, the cure is to reconnect
                if not self._closed.is_set():
                    logger.debug("Engine events stream dropped: %r", exc)
            finally:
                if not self._closed.is_set():
                    followed(False)  # before anything else: listings kept from here on could go stale unseen
                self.connected.clear()
                with self._stream_lock:
                    self._stream = None
                    _shut(stream)
                    stream.close()  # releases the socket's file descriptor now, not at garbage collection
            if time.monotonic() - opened > _RECONNECT_MAX_S:
                backoff.reset()  # it was followed for a while: this is a new drop, not the same outage
            if not self._closed.is_set():
                # A stream that drops as soon as it opens (a proxy that cuts it) is retried ever more slowly.
                self._closed.wait(backoff.next())


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


def _open_events(client: Any) -> Any:
    """GET /events as docker-py's ``events`` would, streamed: container events of compose projects.

    Raises:
        EngineUnavailable: the engine answered with an error status.
    """
    response = client.get(
        f"{client.base_url}/v{client.api_version}/events",
        params={"filters": json.dumps({"type": ["container"], "label": [PROJECT_LABEL]})},
        stream=True,
        timeout=None,  # the stream is quiet until something happens; close() ends it
    )
    if response.status_code != 200:
        try:
            raise EngineUnavailable(f"the engine refused its events stream: HTTP {response.status_code}")
        finally:
            response.close()
    return response


def _events(response: Any) -> Iterator[dict[str, Any]]:
    """The engine's events, one JSON object a line, as they arrive."""
    for line in response.iter_lines():
        if line:
            event: dict[str, Any] = json.loads(line)
            yield event


def _shut(response: Any) -> None:
    """Shut the response's socket so that a read blocked on it returns; harmless if already shut or closed."""
    try:
        response.raw.shutdown()
    except (OSError, ValueError, RuntimeError):  # urllib3: already closed, or released to its pool
        pass
