"""Reading a request's body before the app behind does, and handing it on unchanged.

The token endpoint's ``resource`` check and the scope challenge on ``/mcp`` look at a body the
SDK's handler then reads itself: the body is read once, bounded, and replayed.
"""

from __future__ import annotations

from starlette.types import Message, Receive

__all__ = ["read_body", "replay"]


async def read_body(receive: Receive, limit: int) -> tuple[bytes, bool, list[Message]]:
    """The body (at most ``limit`` bytes), whether it was complete, and the messages read, to replay.

    A body over ``limit`` is not read further: the caller passes the request on as it is, and the
    app behind applies its own limit.
    """
    body = b""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return body, False, messages
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body, True, messages
        if len(body) > limit:
            return body, False, messages


def replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that yields ``messages`` first, then what ``receive`` still has."""
    queue = list(messages)

    async def again() -> Message:
        if queue:
            return queue.pop(0)
        return await receive()

    return again
