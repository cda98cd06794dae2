"""The gateway's HTTP face: Streamable HTTP at /mcp, SSE at /sse (+ /messages/), /health and metrics.

All on one port. MCP routes need a bearer token; /health and the metrics routes do not. Below the
app, the connection edge (:mod:`gateway.mcp.edge`) bounds connections and slow requests; in it,
:class:`EdgeLimiter` limits failed logins, and each token's rate and sessions; streams that carry
nothing end (:mod:`gateway.mcp.streams`); ``/health`` says what :class:`~gateway.mcp.health.Vitals`
finds; and background tasks run supervised (:func:`~gateway.mcp.health.supervise`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskStatus
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..compose.running import RunningCommands
from ..operations import ComposeOperations
from ..ratelimit import FailureLimiter, SessionCounter, TokenBucket, client_key
from .edge import mark_authenticated
from .health import Vitals, supervise
from .oauth.routes import is_oauth_path
from .streams import serve_stream

__all__ = ["build_http_app", "transport_security_for", "EdgeLimiter", "Limits", "Shutdown"]

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
BackgroundTask = Callable[[], Coroutine[Any, Any, None]]
# Seconds a stream may carry nothing before it is ended (see gateway.mcp.streams).
DEFAULT_STREAM_IDLE_TIMEOUT = 300.0


def transport_security_for(host: str, allowed_hosts: list[str]) -> TransportSecuritySettings:
    """DNS-rebinding protection that stays on, also in a container bound to 0.0.0.0.

    ``allowed_hosts`` are Host header patterns (``compose-agent:*``); ``["*"]`` turns the check off.
    """
    if allowed_hosts == ["*"]:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts = list(allowed_hosts) or ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    if not allowed_hosts and host not in LOOPBACK_HOSTS and host not in ("0.0.0.0", "::"):
        hosts.append(f"{host}:*")
    origins = [f"http://{h}" for h in hosts] + [f"https://{h}" for h in hosts]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


OPEN_PATHS = frozenset({"/health", "/api/v1/metrics", "/metrics"})
_SESSION_HEADER = b"mcp-session-id"


@dataclass(frozen=True)
class Limits:
    """What the HTTP edge enforces before a request reaches the MCP SDK.

    ``identify`` maps a presented bearer token to its principal's name (None: not a valid token).
    It is checked first, so a valid token is never counted against, nor refused for, the failures
    of whoever else shares its address.
    """

    identify: Callable[[str], str | None]
    failures: FailureLimiter = field(default_factory=FailureLimiter)
    rate: TokenBucket | None = None
    sessions: SessionCounter | None = None


@dataclass(frozen=True)
class Shutdown:
    """How the app stops: ``requested`` turns true on the server's stop signal (it is polled)."""

    running: RunningCommands
    timeout: float
    requested: Callable[[], bool]


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return str(value.decode("latin-1"))
    return None


def _too_many(message: str, retry_after: float) -> Response:
    """429 with Retry-After, and a JSON-RPC error body: the clients on these paths speak MCP."""
    seconds = max(1, math.ceil(retry_after))
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": message}}
    return JSONResponse(body, status_code=429, headers={"Retry-After": str(seconds)})


class EdgeLimiter:
    """Failed-login limiting per client address, and rate and session limits per token.

    ``/health`` and the metrics routes pass untouched. A request with a valid token is subject
    only to its own token's limits. A request without one is refused with 429 once its address
    has failed too often; its 401 answers are what is counted. The address is the one the server
    sees: uvicorn rewrites it from proxy headers only for ``--forwarded-allow-ips``.
    """

    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        principal = self.limits.identify(token) if token else None
        if principal is None:
            await self._unauthenticated(scope, receive, send, guessed=token is not None)
            return
        mark_authenticated()
        rate = self.limits.rate
        if rate is not None:
            wait = rate.take(principal)
            if wait is not None:
                message = f"the token of '{principal}' is over its request rate of {rate.rate:g}/s; slow down"
                await _too_many(message, wait)(scope, receive, send)
                return
        sessions = self.limits.sessions
        path: str = scope["path"]
        if sessions is None:
            await self.app(scope, receive, send)
        elif path == "/mcp" or path.startswith("/mcp/"):
            await self._streamable(sessions, principal, scope, receive, send)
        elif path == "/sse":
            await self._sse(sessions, principal, scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _unauthenticated(self, scope: Scope, receive: Receive, send: Send, *, guessed: bool = True) -> None:
        failures = self.limits.failures
        client = scope.get("client")
        key = client_key(client[0] if client else None)
        retry = failures.retry_after(key)
        if retry is not None:
            message = "too many failed logins from this address; wait, then retry with a valid token"
            await _too_many(message, retry)(scope, receive, send)
            return

        async def watch(message: Message) -> None:
            # Only a presented token that is wrong counts: an OAuth client's first request has
            # none (it is how it discovers where to log in), and hosted clients share a few addresses.
            if message["type"] == "http.response.start" and message["status"] == 401 and guessed:
                failures.record_failure(key)
            await send(message)

        await self.app(scope, receive, watch)

    def _session_refusal(self, sessions: SessionCounter, principal: str) -> Response:
        message = (
            f"the token of '{principal}' has {sessions.limit} open sessions, the most allowed; end sessions "
            f"you no longer use (HTTP DELETE), or wait for idle ones to close after {sessions.idle_timeout:g} s"
        )
        return _too_many(message, sessions.idle_timeout)

    async def _streamable(
        self, sessions: SessionCounter, principal: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        session_id = _header(scope, _SESSION_HEADER)
        if session_id is None:
            # No session yet: the SDK opens one for this request, so it takes a place first.
            if not sessions.reserve(principal):
                await self._session_refusal(sessions, principal)(scope, receive, send)
                return
            opened: list[str] = []

            async def on_open(message: Message) -> None:
                if message["type"] == "http.response.start" and message["status"] < 400:
                    for name, value in message.get("headers", []):
                        if name.lower() == _SESSION_HEADER:
                            opened.append(value.decode("latin-1"))
                    if opened:
                        sessions.opened(principal, opened[0])
                await send(message)

            try:
                await self.app(scope, receive, on_open)
            finally:
                if not opened:
                    sessions.release(principal)
            return

        deleting = scope["method"] == "DELETE"

        async def on_reply(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if status == 404 or (deleting and status < 300):
                    sessions.closed(session_id)
            await send(message)

        sessions.begin(session_id)
        try:
            await self.app(scope, receive, on_reply)
        finally:
            sessions.end(session_id)

    async def _sse(self, sessions: SessionCounter, principal: str, scope: Scope, receive: Receive, send: Send) -> None:
        # An SSE session lives exactly as long as its GET stream: it holds a place until the stream ends.
        if not sessions.reserve(principal):
            await self._session_refusal(sessions, principal)(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            sessions.release(principal)


def build_http_app(
    mcp: MCPServer,
    ops: ComposeOperations,
    *,
    host: str = "127.0.0.1",
    allowed_hosts: list[str] | None = None,
    background: dict[str, BackgroundTask] | None = None,
    limits: Limits,
    shutdown: Shutdown | None = None,
    oauth_app: ASGIApp | None = None,
    guard: Callable[[ASGIApp], ASGIApp] | None = None,
    vitals: Vitals | None = None,
    stream_idle_timeout: float = DEFAULT_STREAM_IDLE_TIMEOUT,
) -> ASGIApp:
    """One ASGI app for every HTTP route of the gateway, behind the :class:`EdgeLimiter`.

    ``background`` tasks (the watcher, the notifier, the token refresh), by name, run supervised for
    the app's lifetime in its lifespan task group: one that fails is started again, never taking the
    sessions down. ``vitals`` answers ``/health`` (by default, from ``ops``'s engine alone).
    With ``shutdown``, a stop waits for running Compose commands first (see :mod:`gateway.compose.running`).
    ``oauth_app`` answers the authorization server's paths (no bearer token there, so in front
    of the edge limits), and ``guard`` wraps ``/mcp`` (the scope challenge).
    """
    vitals = vitals or Vitals(ops.engine.ping, engine_state=lambda: ops.engine.state.as_dict())
    security = transport_security_for(host, allowed_hosts or [])
    sessions = limits.sessions
    streamable = mcp.streamable_http_app(
        transport_security=security,
        host=host,
        # The SDK closes idle sessions on the same clock the per-token count forgets them by.
        session_idle_timeout=sessions.idle_timeout if sessions else 300.0,
        # Its own cap is global, so one token could fill it: set it where the per-token caps of
        # the two HTTP principals cannot reach it, so that only those ever refuse.
        max_sessions=None if sessions is None else 2 * sessions.limit + 1,
    )
    sse = mcp.sse_app(transport_security=security, host=host)
    mcp_app = guard(streamable) if guard is not None else streamable

    async def health(request: Request) -> Response:
        report = await vitals.report()
        return JSONResponse(report.body, status_code=report.status_code, headers={"Cache-Control": "no-store"})

    async def metrics_json(request: Request) -> Response:
        return JSONResponse(ops.metrics.snapshot())

    async def metrics_text(request: Request) -> Response:
        return PlainTextResponse(ops.metrics.prometheus(), media_type="text/plain; version=0.0.4")

    # SSE sessions and GET streams live in their request; a shutdown ends them through these scopes.
    sse_streams: set[anyio.CancelScope] = set()

    async def serve_sessions(*, task_status: TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.CancelScope() as scope:
            try:
                async with mcp.session_manager.run():
                    vitals.sessions_running = True
                    task_status.started(scope)
                    await anyio.sleep_forever()
            finally:
                # Whatever ended it, no MCP request can be served now: /health says so.
                vitals.sessions_running = False

    async def stop_when_asked(sessions_scope: anyio.CancelScope) -> None:
        """On the server's stop: let running commands finish (bounded), then end every MCP session.

        Ending the sessions closes their open streams, so the server's own wait for open
        connections ends at once instead of at its timeout.
        """
        assert shutdown is not None
        while not shutdown.requested():
            await anyio.sleep(0.2)
        stopped = await shutdown.running.drain(shutdown.timeout)
        if stopped:
            logger.warning("stopped at shutdown: %s", ", ".join(stopped))
        sessions_scope.cancel()
        for scope in list(sse_streams):
            scope.cancel()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            sessions_scope: anyio.CancelScope = await tg.start(serve_sessions)
            for name, task in (background or {}).items():
                tg.start_soon(supervise, name, task, vitals)
            if shutdown is not None:
                tg.start_soon(stop_when_asked, sessions_scope)
            yield
            if shutdown is not None:
                # Stopped without the server's signal (a test, an embedding app): still drain.
                await shutdown.running.drain(shutdown.timeout)
            tg.cancel_scope.cancel()

    plain = Starlette(
        routes=[
            Route("/health", health),
            Route("/api/v1/metrics", metrics_json),
            Route("/metrics", metrics_text),
        ],
        lifespan=lifespan,
    )

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await plain(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path == "/sse":
            await serve_stream(sse, scope, receive, send, idle_timeout=stream_idle_timeout, streams=sse_streams)
        elif path.startswith("/messages/"):
            await sse(scope, receive, send)
        elif (path == "/mcp" or path.startswith("/mcp/")) and scope.get("method") == "GET":
            # The standalone stream of a Streamable HTTP session: ended once it carries nothing.
            await serve_stream(mcp_app, scope, receive, send, idle_timeout=stream_idle_timeout, streams=sse_streams)
        elif path == "/mcp" or path.startswith("/mcp/"):
            await mcp_app(scope, receive, send)
        else:
            await plain(scope, receive, send)

    edge = EdgeLimiter(dispatch, limits)
    if oauth_app is None:
        return edge

    async def front(scope: Scope, receive: Receive, send: Send) -> None:
        # The login pages and OAuth endpoints take no bearer token: they are not the edge's to count.
        if scope["type"] == "http" and is_oauth_path(scope["path"]):
            await oauth_app(scope, receive, send)
        else:
            await edge(scope, receive, send)

    return front
