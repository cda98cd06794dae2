"""A loopback HTTP proxy that adds ``Authorization: Bearer <token>`` to every request.

For clients that cannot send a header of their own, such as the MCP conformance suite. Everything
else passes through untouched, the Host and Origin headers included, so the gateway's DNS-rebinding
check still sees what the client sent. Each request gets its own upstream connection, and responses
(SSE streams included) are relayed as they arrive, then the client connection is closed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["auth_proxy"]

_MAX_HEAD = 64 * 1024


async def _read_head(stream: BufferedByteReceiveStream) -> bytes:
    return await stream.receive_until(b"\r\n\r\n", _MAX_HEAD)


def _rewrite_request(head: bytes, token: str) -> tuple[bytes, int]:
    lines = head.split(b"\r\n")
    kept = [lines[0]] + [line for line in lines[1:] if not line.lower().startswith((b"authorization:", b"connection:"))]
    length = 0
    for line in kept[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    kept += [f"Authorization: Bearer {token}".encode(), b"Connection: close"]
    return b"\r\n".join(kept) + b"\r\n\r\n", length


def _rewrite_response(head: bytes) -> bytes:
    # The client must not reuse this connection: the proxy handles one request per connection.
    head = re.sub(rb"(?im)^connection:[^\r\n]*\r\n", b"", head + b"\r\n")[:-2]
    return head + b"\r\nConnection: close\r\n\r\n"


async def _relay(client: anyio.abc.SocketStream, upstream_port: int, token: str) -> None:
    async with client:
        reader = BufferedByteReceiveStream(client)
        try:
            head = await _read_head(reader)
        except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError):
            return
        request, length = _rewrite_request(head, token)
        body = await reader.receive_exactly(length) if length else b""
        async with await anyio.connect_tcp("127.0.0.1", upstream_port) as upstream:
            await upstream.send(request + body)
            upstream_reader = BufferedByteReceiveStream(upstream)
            response_head = await _read_head(upstream_reader)
            await client.send(_rewrite_response(response_head))
            if upstream_reader.buffer:
                await client.send(bytes(upstream_reader.buffer))
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                while True:
                    await client.send(await upstream.receive())


@contextlib.asynccontextmanager
async def auth_proxy(upstream_port: int, token: str) -> AsyncIterator[int]:
    """Serve the proxy on a free loopback port for the duration of the block; yields that port."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def handle(client: anyio.abc.SocketStream) -> None:
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.EndOfStream, anyio.IncompleteRead):
            await _relay(client, upstream_port, token)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()
