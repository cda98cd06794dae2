"""A cap on request bodies: a larger one is answered 413 before any of it reaches a route."""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimitMiddleware", "MAX_BODY_BYTES"]

logger = logging.getLogger(__name__)

# The largest thing the panel takes is a login form or an action's service list: a few hundred bytes.
MAX_BODY_BYTES = 1024 * 1024
# How much of a refused body is read and thrown away so that the client sees the 413. A server that
# answers and closes while the client still sends makes its kernel reset the connection, and the
# client then gets a connection error instead of the answer. Past this, the connection is just closed.
DRAIN_BYTES = 64 * 1024 * 1024


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Answers 413 to a body over ``max_bytes``, so no route runs on a truncated or oversized one.

    A declared ``Content-Length`` over the limit is refused before the route runs. A chunked body
    is counted as it arrives, and refused as soon as it passes the limit: the route is reading it
    then, and the error it gets ends the request before it acts. Either way, up to ``drain_bytes``
    of the rest is read and dropped (never held) before the answer, so the client can read it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES, drain_bytes: int = DRAIN_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.drain_bytes = drain_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            # A client waiting for "100 Continue" has sent nothing yet, and need not send it now.
            if headers.get("expect", "").lower() != "100-continue":
                await self._drain(receive)
            await self._refuse(scope, receive, send)
            return

        received = 0
        started = False
        body_ended = False

        async def counting_receive() -> Message:
            nonlocal received, body_ended
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_ended = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except _BodyTooLarge:
            if started:
                raise
            if not body_ended:  # asking for more after the last part would wait for a disconnect
                await self._drain(receive)
            await self._refuse(scope, receive, send)

    async def _drain(self, receive: Receive) -> None:
        drained = 0
        while drained <= self.drain_bytes:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            drained += len(message.get("body", b""))

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        logger.warning("refused a request body over %d bytes on %s", self.max_bytes, scope.get("path"))
        message = f"the request body is larger than {self.max_bytes} bytes; send a smaller one"
        response: Response
        if str(scope.get("path", "")).startswith("/api/"):
            response = JSONResponse({"error": message}, status_code=413)
        else:
            response = PlainTextResponse(message, status_code=413)
        # The rest of the body is not read; closing the connection is cheaper than draining it.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)
