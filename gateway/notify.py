"""Telling hosts what changed, in both eras of the protocol.

- **2026-07-28 and later:** a client opens a ``subscriptions/listen`` stream and the SDK's
  subscription bus fans events out to it: list changes, and ``resources/updated`` for the URIs it
  named. Log messages ride the request that opted in to them (``_meta`` log level).
- **Up to 2025-11-25 (the initialize handshake):** ``notifications/resources/list_changed`` goes to
  every connected session, ``notifications/resources/updated`` to the sessions that called
  ``resources/subscribe`` for that URI, and log messages follow the level each session set with
  ``logging/setLevel``. The gateway's own warnings are broadcast to these sessions as well.

Every send is best effort: a host that went away or stopped reading loses the notification, never
blocks the others, and never fails the call that caused it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, get_args

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream
from mcp.server.connection import Connection
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.subscriptions import ResourcesListChanged, ResourceUpdated, SubscriptionBus
from mcp_types import (
    LOG_LEVEL_META_KEY,
    EmptyResult,
    LoggingLevel,
    LoggingMessageNotification,
    LoggingMessageNotificationParams,
    ResourceListChangedNotification,
    ResourceUpdatedNotification,
    ResourceUpdatedNotificationParams,
    ServerNotification,
    SetLevelRequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

__all__ = ["Notifier", "LOG_LEVELS", "DEFAULT_LOG_LEVEL", "MAX_SUBSCRIPTIONS"]

logger = logging.getLogger(__name__)

LOG_LEVELS: tuple[LoggingLevel, ...] = get_args(LoggingLevel)
# What a session hears before it asks for a level: Compose's progress and the gateway's warnings.
DEFAULT_LOG_LEVEL: LoggingLevel = "info"
# A host that does not take a notification within this long is skipped, not waited for.
_SEND_TIMEOUT_S = 2.0
# Resources one handshake-era session may follow: a status URI per stack, with room to spare.
MAX_SUBSCRIPTIONS = 1000
# Gateway warnings waiting to be broadcast; beyond this, new ones are dropped.
_LOG_BACKLOG = 256

_PYTHON_TO_MCP: tuple[tuple[int, LoggingLevel], ...] = (
    (logging.CRITICAL, "critical"),
    (logging.ERROR, "error"),
    (logging.WARNING, "warning"),
    (logging.INFO, "info"),
)


def mcp_level(levelno: int) -> LoggingLevel:
    """The MCP (syslog) level of a Python log level."""
    for threshold, name in _PYTHON_TO_MCP:
        if levelno >= threshold:
            return name
    return "debug"


def _at_least(level: LoggingLevel, threshold: LoggingLevel) -> bool:
    return LOG_LEVELS.index(level) >= LOG_LEVELS.index(threshold)


def _connection(session: ServerSession) -> Connection | None:
    # ServerSession is a per-request proxy with no public accessor for its connection; the
    # connection is what per-session state (log level, subscriptions) belongs to, and its exit
    # stack is the one place that knows when the session is gone.
    connection = getattr(session, "_connection", None)
    return connection if isinstance(connection, Connection) else None


@dataclass
class _Peer:
    """One handshake-era session: where to send, at which log level, for which URIs."""

    session: ServerSession
    level: LoggingLevel = DEFAULT_LOG_LEVEL
    level_set: bool = False
    subscriptions: set[str] = field(default_factory=set)


class Notifier:
    """Fans stack changes and log messages out to connected hosts.

    Call :meth:`install` once on the MCPServer, and run :meth:`run` for the server's lifetime (it
    forwards the gateway's warnings, which may be logged from any thread).
    """

    def __init__(self, bus: SubscriptionBus) -> None:
        self.bus = bus
        self._peers: dict[int, _Peer] = {}
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._loop_thread: int | None = None
        self._send: MemoryObjectSendStream[tuple[LoggingLevel, str, str]] | None = None
        self.handler = _ClientLogHandler(self)

    # -- wiring -----------------------------------------------------------------------------

    def install(self, lowlevel: Any, middleware: list[Any]) -> None:
        """Serve ``logging/setLevel`` and watch sessions come and go (the low-level server's hooks)."""
        lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, self._set_level)
        middleware.append(self._observe)

    async def _observe(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        if ctx.method == "initialize" and isinstance(result, dict):
            # The SDK derives listChanged from options only its own entry points pass; the gateway
            # does send resources/list_changed to handshake-era sessions, so it says so.
            resources = (result.get("capabilities") or {}).get("resources")
            if isinstance(resources, dict):
                resources["listChanged"] = True
        elif ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            self.peer(ctx.session)
        return result

    def peer(self, session: ServerSession) -> _Peer | None:
        """The handshake-era session behind ``session``, registered on first sight."""
        connection = _connection(session)
        if connection is None or connection.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return None
        key = id(connection)
        peer = self._peers.get(key)
        if peer is None:
            peer = self._peers[key] = _Peer(session)
            connection.exit_stack.callback(self._peers.pop, key, None)
        return peer

    async def _set_level(self, ctx: ServerRequestContext[Any, Any], params: SetLevelRequestParams) -> EmptyResult:
        peer = self.peer(ctx.session)
        if peer is not None:
            peer.level, peer.level_set = params.level, True
        return EmptyResult()

    # -- stack changes ------------------------------------------------------------------------

    async def list_changed(self) -> None:
        """Stacks appeared or went away: every host should list resources again."""
        await self.bus.publish(ResourcesListChanged())
        await self._broadcast(ResourceListChangedNotification(), lambda peer: True)

    async def updated(self, uri: str) -> None:
        """The resource at ``uri`` changed; hosts that subscribed to it are told."""
        await self.bus.publish(ResourceUpdated(uri=uri))
        notification = ResourceUpdatedNotification(params=ResourceUpdatedNotificationParams(uri=uri))
        await self._broadcast(notification, lambda peer: uri in peer.subscriptions)

    def subscribe(self, session: ServerSession, uri: str) -> bool:
        """Note that ``session`` wants to hear about ``uri``; False when it already follows too many."""
        peer = self.peer(session)
        if peer is not None:
            if uri not in peer.subscriptions and len(peer.subscriptions) >= MAX_SUBSCRIPTIONS:
                return False
            peer.subscriptions.add(uri)
        return True

    def unsubscribe(self, session: ServerSession, uri: str) -> None:
        peer = self.peer(session)
        if peer is not None:
            peer.subscriptions.discard(uri)

    def subscribed(self, uri: str) -> bool:
        """Whether a handshake-era session subscribed to ``uri`` (tests wait on it)."""
        return any(uri in peer.subscriptions for peer in self._peers.values())

    async def _broadcast(self, notification: ServerNotification, wanted: Any) -> None:
        peers = [peer for peer in list(self._peers.values()) if wanted(peer)]
        if not peers:
            return
        async with anyio.create_task_group() as tg:
            for peer in peers:
                tg.start_soon(self._send_one, peer, notification)

    async def _send_one(self, peer: _Peer, notification: ServerNotification) -> None:
        with anyio.move_on_after(_SEND_TIMEOUT_S):
            try:
                await peer.session.send_notification(notification)
            except Exception as exc:  # noqa: BLE001 - a host that went away must not fail the others
                logger.debug("dropped %s for a session: %r", notification.method, exc)

    # -- log messages -------------------------------------------------------------------------

    async def log_to_request(
        self, ctx: ServerRequestContext[Any, Any], level: LoggingLevel, logger_name: str, text: str
    ) -> None:
        """Send a log message on the stream of the request being served, if its client wants that level.

        A 2026-era request opts in through its ``_meta`` log level; a handshake-era session through
        ``logging/setLevel`` (``info`` until it sets one).
        """
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            requested = (ctx.meta or {}).get(LOG_LEVEL_META_KEY)
            if requested not in LOG_LEVELS or not _at_least(level, requested):
                return
        else:
            peer = self.peer(ctx.session)
            if peer is not None and not _at_least(level, peer.level):
                return
        params = LoggingMessageNotificationParams(level=level, logger=logger_name, data=text)
        try:
            await ctx.session.send_notification(LoggingMessageNotification(params=params), ctx.request_id)
        except Exception as exc:  # noqa: BLE001 - a lost log line must not fail the call it describes
            logger.debug("dropped a log message: %r", exc)

    async def run(self) -> None:
        """Forward the gateway's warnings to handshake-era sessions until cancelled."""
        send, receive = anyio.create_memory_object_stream[tuple[LoggingLevel, str, str]](_LOG_BACKLOG)
        self._token = anyio.lowlevel.current_token()
        self._loop_thread = threading.get_ident()
        self._send = send
        try:
            async with receive:
                async for level, name, text in receive:
                    params = LoggingMessageNotificationParams(level=level, logger=name, data=text)
                    notification = LoggingMessageNotification(params=params)
                    await self._broadcast(notification, lambda peer, level=level: _at_least(level, peer.level))
        finally:
            self._send = None
            send.close()

    def enqueue(self, level: LoggingLevel, name: str, text: str) -> None:
        """Queue a log message for broadcast; callable from any thread, never blocks, drops on overflow."""
        send, token = self._send, self._token
        if send is None or token is None or not self._peers:
            return
        try:
            if threading.get_ident() == self._loop_thread:
                send.send_nowait((level, name, text))
            else:
                anyio.from_thread.run_sync(send.send_nowait, (level, name, text), token=token)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError, RuntimeError):
            pass


class _ClientLogHandler(logging.Handler):
    """Hands the gateway's own warnings to the notifier, to be broadcast as log messages."""

    def __init__(self, notifier: Notifier) -> None:
        super().__init__(logging.WARNING)
        self.notifier = notifier

    def emit(self, record: logging.LogRecord) -> None:
        # Never about itself: a failed broadcast that broadcast its own failure would loop.
        if record.name == __name__:
            return
        try:
            self.notifier.enqueue(mcp_level(record.levelno), record.name, record.getMessage())
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)
