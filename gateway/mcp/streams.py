"""Streams that carry nothing end: SSE sessions (``GET /sse``) and Streamable HTTP GET streams.

Left alone, such a stream stays open for as long as its client keeps the connection: an SSE
session lives exactly as long as its stream, and the SDK counts an open GET stream as a request in
flight, which keeps its Streamable HTTP session from ever becoming idle. Either way the stream
holds a file descriptor and one of its token's session places, forever.

:func:`serve_stream` ends a stream that has sent nothing but keep-alive comments (SSE lines that
start with ``:``, the pings sse-starlette sends every 15 s) for ``idle_timeout`` seconds: the handler
is cancelled and the response is ended cleanly, as a finished stream. A client that still wants it
opens another (the MCP clients reconnect their GET stream; an SSE client starts a new session).
The session places are counted by the :class:`~gateway.mcp.app.EdgeLimiter` around this call, so
they are given back as the stream ends.
"""

from __future__ import annotations

import logging

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["serve_stream", "carries_data"]

logger = logging.getLogger(__name__)

# How long the last, empty chunk that ends an idle stream may wait for a client that does not read.
_END_TIMEOUT_S = 2.0


def carries_data(body: bytes) -> bool:
    """Whether an SSE chunk holds anything but comments (keep-alive pings) and blank lines."""
    return any(line and not line.startswith(b":") for line in body.splitlines())


async def serve_stream(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    idle_timeout: float,
    streams: set[anyio.CancelScope],
) -> None:
    """Serve a streaming request with ``app``, ending it once it has carried no data for ``idle_timeout``.

    The stream's cancel scope is in ``streams`` while it runs, so a shutdown can end it too.
    """
    started = completed = False
    with anyio.CancelScope() as stream:
        stream.deadline = anyio.current_time() + idle_timeout
        streams.add(stream)

        async def watched(message: Message) -> None:
            nonlocal started, completed
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body":
                completed = not message.get("more_body", False)
                if carries_data(message.get("body", b"")):
                    stream.deadline = anyio.current_time() + idle_timeout
            await send(message)

        try:
            await app(scope, receive, watched)
        finally:
            streams.discard(stream)
    if stream.cancelled_caught:
        logger.debug("ended a stream on %s that carried nothing for %g s (or at shutdown)", scope["path"], idle_timeout)
    if started and not completed:
        # A finished stream rather than a broken one: the client sees its end, and the connection stays usable.
        with anyio.move_on_after(_END_TIMEOUT_S):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
