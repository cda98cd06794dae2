"""The panel's last word on secrets: every page and API answer passes the gateway's redactor.

In client mode the panel shows what the gateway answered, already redacted, and its own redactor
knows nothing. In legacy mode the panel runs the operations itself, so the values a stack's ``up``
resolved from Vault are known in this process, and this middleware removes them from every HTML,
JSON or text body before it leaves (see ``gateway.redact``). Static files and empty redactors pass
untouched.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api import REDACTOR, Redactor

__all__ = ["RedactingMiddleware"]

_TEXT_TYPES = ("text/", "application/json", "application/javascript", "application/x-ndjson")


class RedactingMiddleware:
    """Buffers each textual response body, redacts it, and fixes its ``Content-Length``."""

    def __init__(self, app: ASGIApp, redactor: Redactor = REDACTOR) -> None:
        self.app = app
        self.redactor = redactor

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.redactor or scope.get("path", "").startswith("/static/"):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []
        streaming = False

        async def send_redacted(message: Message) -> None:
            nonlocal start
            nonlocal streaming
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                content_type = headers.get("content-type", "")
                if content_type.startswith("text/event-stream"):
                    # A stream is never buffered: each event is redacted as it goes (an event is whole).
                    streaming = True
                    await send(message)
                    return
                if not content_type.startswith(_TEXT_TYPES):
                    start = None
                    await send(message)
                    return
                start = message
                return
            if streaming and message["type"] == "http.response.body":
                body = self.redactor.redact(message.get("body", b"").decode("utf-8", "replace")).encode()
                await send({**message, "body": body})
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = self.redactor.redact(b"".join(chunks).decode("utf-8", "replace")).encode()
            headers = MutableHeaders(scope=start)
            headers["content-length"] = str(len(body))
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, send_redacted)
