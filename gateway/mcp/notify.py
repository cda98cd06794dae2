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

The SDK's MCPServer has no public seam for the handshake-era methods (``logging/setLevel``,
``resources/subscribe``, ``resources/unsubscribe``), and the SDK reserves its extension methods for
new, non-spec ones. So a middleware on the public ``mcp.middleware`` list answers them, after the
same validation the SDK applies to every request, and declares them in the handshake's capabilities.

A handshake-era session is known by the identity of its ``client_params`` (public on every
request's session, and one object per connection for the connection's life). No public hook says
when a connection ends, and a notification to an ended one is dropped silently; a request to it,
though, fails at once with ``CONNECTION_CLOSED``. So a session that has been quiet for a while is
pinged, as the protocol allows either side to, and forgotten if its connection is closed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, get_args

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourcesListChanged, ResourceUpdated, SubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CONNECTION_CLOSED,
    INVALID_PARAMS,
    LOG_LEVEL_META_KEY,
    EmptyResult,
    LoggingLevel,
    LoggingMessageNotification,
    LoggingMessageNotificationParams,
    PingRequest,
    ResourceListChangedNotification,
    ResourceUpdatedNotification,
    ResourceUpdatedNotificationParams,
    ServerNotification,
    SetLevelRequestParams,
)
from mcp_types.methods import validate_client_request
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, ValidationError

from ..backoff import Backoff
from ..redact import REDACTOR

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
# A handshake-era session quiet for this long is pinged, and forgotten if its connection is closed.
SWEEP_INTERVAL_S = 60.0
# How long a ping may go unanswered; an unanswered one keeps the session (only a closed one ends it).
_PING_TIMEOUT_S = 10.0

# A handshake-era request the middleware answers: (its params model, its handler).
HandshakeHandler = Callable[[ServerRequestContext[Any, Any], Any], Awaitable[BaseModel]]

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


@dataclass
class _Peer:
    """One handshake-era session: where to send, at which log level, for which URIs."""

    session: ServerSession
    level: LoggingLevel = DEFAULT_LOG_LEVEL
    level_set: bool = False
    subscriptions: set[str] = field(default_factory=set)
    last_seen: float = 0.0  # anyio's clock, at its last request


class Notifier:
    """Fans stack changes and log messages out to connected hosts.

    Call :meth:`install` once on the MCPServer, and run :meth:`run` for the server's lifetime (it
    forwards the gateway's warnings, which may be logged from any thread, and forgets the
    handshake-era sessions that have ended).
    """

    @classmethod
    def in_memory(cls) -> Notifier:
        """A notifier on the SDK's in-process subscription bus: the gateway's own, one per process."""
        return cls(InMemorySubscriptionBus())

    def __init__(self, bus: SubscriptionBus, *, sweep_interval: float = SWEEP_INTERVAL_S) -> None:
        self.bus = bus
        self.sweep_interval = sweep_interval
        # Keyed by id() of the session's client_params, which the peer's session keeps alive (so the id
        # cannot be reused while the entry exists).
        self._peers: dict[int, _Peer] = {}
        self._handshake_methods: dict[str, tuple[type[BaseModel], HandshakeHandler]] = {
            "logging/setLevel": (SetLevelRequestParams, self._set_level)
        }
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._loop_thread: int | None = None
        self._send: MemoryObjectSendStream[tuple[LoggingLevel, str, str]] | None = None
        self.handler = _ClientLogHandler(self)

    # -- wiring -----------------------------------------------------------------------------

    def install(self, middleware: list[Any]) -> None:
        """Answer the handshake-era methods and watch sessions come (``mcp.middleware``, once)."""
        middleware.append(self._middleware)

    def serve(self, method: str, params_type: type[BaseModel], handler: HandshakeHandler) -> None:
        """Answer the handshake-era request ``method`` with ``handler`` (and declare it at the handshake)."""
        self._handshake_methods[method] = (params_type, handler)

    @property
    def sessions(self) -> int:
        """How many handshake-era sessions are known (tests wait on it)."""
        return len(self._peers)

    async def _middleware(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method in ("initialize", "server/discover"):
            return self._declare(await call_next(ctx))
        handshake_era = ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS
        if handshake_era:
            self.peer(ctx.session)
        served = self._handshake_methods.get(ctx.method)
        if served is None or not handshake_era or ctx.request_id is None:
            return await call_next(ctx)
        try:
            validate_client_request(ctx.method, ctx.protocol_version, ctx.params)
        except (KeyError, ValueError, ValidationError):
            # Not this version's, or malformed: the SDK refuses it as it refuses any such request.
            return await call_next(ctx)
        if ctx.session.client_params is None:
            # Before initialize: the same refusal the SDK gives any method served before the handshake.
            raise MCPError(code=INVALID_PARAMS, message="Invalid request parameters", data="")
        params_type, handler = served
        return await handler(ctx, params_type.model_validate(ctx.params or {}, by_name=False))

    def _declare(self, result: HandlerResult) -> HandlerResult:
        """Declare what the middleware serves in a handshake's (or a discovery's) capabilities."""
        capabilities = result.get("capabilities") if isinstance(result, dict) else None
        if not isinstance(capabilities, dict):
            return result
        if "logging/setLevel" in self._handshake_methods:
            capabilities.setdefault("logging", {})
        resources = capabilities.get("resources")
        if isinstance(resources, dict):
            # The SDK derives listChanged from options only its own entry points pass; the gateway
            # does send resources/list_changed to handshake-era sessions, so it says so.
            resources["listChanged"] = True
            if "resources/subscribe" in self._handshake_methods:
                resources["subscribe"] = True
        return result

    def peer(self, session: ServerSession) -> _Peer | None:
        """The handshake-era session behind ``session``, registered on first sight."""
        if session.protocol_version in MODERN_PROTOCOL_VERSIONS or session.client_params is None:
            return None
        key = id(session.client_params)
        peer = self._peers.get(key)
        if peer is None:
            peer = self._peers[key] = _Peer(session)
        peer.last_seen = anyio.current_time()
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
        params = LoggingMessageNotificationParams(level=level, logger=logger_name, data=REDACTOR.redact(text))
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
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._sweep_forever)
                async with receive:
                    async for level, name, text in receive:
                        params = LoggingMessageNotificationParams(level=level, logger=name, data=text)
                        notification = LoggingMessageNotification(params=params)
                        try:
                            await self._broadcast(notification, lambda peer, level=level: _at_least(level, peer.level))
                        except Exception as exc:  # noqa: BLE001 - a lost log message must not end the forwarding
                            logger.debug("dropped a log message for every session: %r", exc)
        finally:
            self._send = None
            send.close()

    async def _sweep_forever(self) -> None:
        backoff = Backoff(self.sweep_interval, 10 * self.sweep_interval)
        delay = self.sweep_interval
        while True:
            await anyio.sleep(delay)
            try:
                await self.sweep()
            except Exception as exc:  # noqa: BLE001 - a failed sweep is tried again, later and later
                delay = backoff.next()
                logger.debug("could not sweep the sessions (%r); next sweep in %.0f s", exc, delay)
            else:
                backoff.reset()
                delay = self.sweep_interval

    async def sweep(self) -> None:
        """Forget the handshake-era sessions whose connection has closed, pinging those quiet for a while."""
        quiet_since = anyio.current_time() - self.sweep_interval
        quiet = [(key, peer) for key, peer in list(self._peers.items()) if peer.last_seen <= quiet_since]
        if not quiet:
            return
        async with anyio.create_task_group() as tg:
            for key, peer in quiet:
                tg.start_soon(self._probe, key, peer)

    async def _probe(self, key: int, peer: _Peer) -> None:
        try:
            await peer.session.send_request(PingRequest(), EmptyResult, request_read_timeout_seconds=_PING_TIMEOUT_S)
        except MCPError as exc:
            if exc.error.code == CONNECTION_CLOSED:
                self._peers.pop(key, None)
                return
            logger.debug("a quiet session did not answer a ping: %r", exc)
        except Exception as exc:  # noqa: BLE001 - a session that cannot be pinged is kept, not fatal
            logger.debug("cannot ping a quiet session: %r", exc)
        else:
            peer.last_seen = anyio.current_time()

    def enqueue(self, level: LoggingLevel, name: str, text: str) -> None:
        """Queue a log message for broadcast; callable from any thread, never blocks, drops on overflow."""
        send, token = self._send, self._token
        if send is None or token is None or not self._peers:
            return
        text = REDACTOR.redact(text)
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
