"""The gateway's HTTP face: Streamable HTTP at /mcp, SSE at /sse (+ /messages/), /health and metrics.

All on one port. MCP routes need a bearer token; /health and the metrics routes do not.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .operations import ComposeOperations

__all__ = ["build_http_app", "transport_security_for", "AuthFailureLimiter"]

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
BackgroundTask = Callable[[], Coroutine[Any, Any, None]]


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


class AuthFailureLimiter:
    """Answers 429 with Retry-After to a client that keeps presenting bad tokens.

    Counts 401 responses per client address in a sliding window; a client over the limit is
    refused before its request reaches the auth check, so guessing tokens gets slow.
    """

    def __init__(self, app: ASGIApp, *, limit: int = 30, window_s: float = 60.0) -> None:
        self.app = app
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def _client(self, scope: Scope) -> str:
        client = scope.get("client")
        return str(client[0]) if client else "?"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = self._client(scope)
        now = time.monotonic()
        failures = self._failures.get(client)
        if failures:
            while failures and failures[0] < now - self.window_s:
                failures.popleft()
            if len(failures) >= self.limit:
                retry = int(failures[0] + self.window_s - now) + 1
                response = JSONResponse(
                    {"error": "too many requests with a bad token; wait and retry with a valid one"},
                    status_code=429,
                    headers={"Retry-After": str(retry)},
                )
                await response(scope, receive, send)
                return

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                bucket = self._failures.setdefault(client, deque())
                bucket.append(time.monotonic())
                if len(self._failures) > 10_000:
                    self._failures.clear()
            await send(message)

        await self.app(scope, receive, watch)


def build_http_app(
    mcp: MCPServer,
    ops: ComposeOperations,
    *,
    host: str = "127.0.0.1",
    allowed_hosts: list[str] | None = None,
    background: list[BackgroundTask] | None = None,
) -> ASGIApp:
    """One ASGI app for every HTTP route of the gateway.

    ``background`` tasks (token refresh) run for the app's lifetime in its lifespan task group.
    """
    security = transport_security_for(host, allowed_hosts or [])
    streamable = mcp.streamable_http_app(transport_security=security, host=host)
    sse = mcp.sse_app(transport_security=security, host=host)

    async def health(request: Request) -> Response:
        engine = "up"
        try:
            await anyio.to_thread.run_sync(ops.engine.ping)
        except Exception:  # noqa: BLE001 - any failure means the same to a health probe
            engine = "down"
        # Always 200: an engine outage is not the gateway's fault, and restarting it would not help.
        return JSONResponse(
            {"status": "ok" if engine == "up" else "degraded", "version": __version__, "engine": engine}
        )

    async def metrics_json(request: Request) -> Response:
        return JSONResponse(ops.metrics.snapshot())

    async def metrics_text(request: Request) -> Response:
        return PlainTextResponse(ops.metrics.prometheus(), media_type="text/plain; version=0.0.4")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with mcp.session_manager.run(), anyio.create_task_group() as tg:
            for task in background or []:
                tg.start_soon(task)
            yield
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
        if path == "/sse" or path.startswith("/messages/"):
            await sse(scope, receive, send)
        elif path == "/mcp" or path.startswith("/mcp/"):
            await streamable(scope, receive, send)
        else:
            await plain(scope, receive, send)

    return AuthFailureLimiter(dispatch)
