"""A small async client for the Engine API's read endpoints, over its Unix socket.

``ps`` is the gateway's hottest call, and docker-py made its one Engine request the biggest cost
of it: requests' per-call machinery, plus a worker-thread hop whose GIL hand-offs grow with
concurrency. Measured under 8 concurrent clients, that path cost about 1.4 ms of CPU per call;
this client, on the event loop, about 0.3 ms (see docs/performance.md). It speaks only what
those reads need: one ``GET`` per connection with a JSON answer, ``Content-Length`` or chunked.
A fresh connection per request costs 0.03 ms here and leaves no pool bound to an event loop.
Everything else (writes, logs, TCP engines) stays with docker-py in :mod:`gateway.engine`.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any
from urllib.parse import quote, urlencode

import anyio
from anyio.abc import SocketStream

from .errors import EngineUnavailable, GatewayError

__all__ = ["EngineHTTP", "EngineRefused"]

logger = logging.getLogger(__name__)

_MAX_HEAD = 64 * 1024
_MAX_BODY = 256 * 1024 * 1024  # a listing of thousands of containers is a few MB; this bounds a broken peer
_RAISE: Any = object()


class EngineRefused(GatewayError):
    """The engine answered with an error status; ``status`` and ``reason`` are its own."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"Docker engine error: {status} {reason}")
        self.status = status
        self.reason = reason


class _Connection:
    """One connection to the engine, with its read buffer."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def _fill(self) -> None:
        chunk = await self.stream.receive(65536)
        self.buffer += chunk

    async def read_until(self, delimiter: bytes, limit: int) -> bytes:
        start = 0
        while True:
            found = self.buffer.find(delimiter, start)
            if found >= 0:
                end = found + len(delimiter)
                data = bytes(self.buffer[:end])
                del self.buffer[:end]
                return data
            if len(self.buffer) > limit:
                raise GatewayError("the Docker engine sent an oversized HTTP header")
            start = max(0, len(self.buffer) - len(delimiter) + 1)
            await self._fill()

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_to_eof(self) -> bytes:
        try:
            while len(self.buffer) <= _MAX_BODY:
                await self._fill()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


class EngineHTTP:
    """``GET`` JSON from the Engine API over a Unix socket."""

    def __init__(self, socket_path: str, *, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    async def get_json(
        self, api_version: str, path: str, query: dict[str, str] | None = None, *, missing: Any = _RAISE
    ) -> Any:
        """The decoded JSON answer of ``GET /v<api_version><path>?<query>``; ``missing`` for a 404 if given.

        Raises:
            EngineUnavailable: the socket cannot be reached, the connection broke, or no answer in time.
            EngineRefused: the engine answered with an error status (its message is kept).
        """
        request = _request(api_version, path, tuple(sorted((query or {}).items())))
        try:
            with anyio.fail_after(self.timeout):
                stream = await anyio.connect_unix(self.socket_path)
                try:
                    status, body = await self._exchange(_Connection(stream), request)
                finally:
                    with anyio.CancelScope(shield=True):
                        await stream.aclose()
        except TimeoutError as exc:
            raise EngineUnavailable(self._unreachable(f"no answer within {self.timeout:g} s")) from exc
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            raise EngineUnavailable(self._unreachable(exc)) from exc
        if status == 404 and missing is not _RAISE:
            return missing
        if status >= 400:
            raise EngineRefused(status, _message(body))
        return json.loads(body)

    @staticmethod
    async def _exchange(connection: _Connection, request: bytes) -> tuple[int, bytes]:
        await connection.stream.send(request)
        head = (await connection.read_until(b"\r\n\r\n", _MAX_HEAD)).decode("latin-1")
        status_line, _, header_text = head.partition("\r\n")
        _, _, rest = status_line.partition(" ")
        status = int(rest.split(" ", 1)[0])
        headers: dict[str, str] = {}
        for line in header_text.split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            total = 0
            while True:
                size = int((await connection.read_until(b"\r\n", 1024)).split(b";", 1)[0].strip(), 16)
                if size == 0:
                    await connection.read_until(b"\r\n", _MAX_HEAD)  # no trailers are sent; the final CRLF
                    break
                total += size
                if total > _MAX_BODY:
                    raise GatewayError("the Docker engine sent an oversized answer")
                parts.append(await connection.read_exactly(size))
                await connection.read_exactly(2)
            return status, b"".join(parts)
        if "content-length" in headers:
            length = int(headers["content-length"])
            if length > _MAX_BODY:
                raise GatewayError("the Docker engine sent an oversized answer")
            return status, await connection.read_exactly(length)
        return status, await connection.read_to_eof()

    def _unreachable(self, exc: BaseException | str) -> str:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return (
            f"cannot reach the Docker engine at unix://{self.socket_path} ({reason}); "
            "check that dockerd is running and that this process may open its socket"
        )


@functools.lru_cache(maxsize=1024)
def _request(api_version: str, path: str, query: tuple[tuple[str, str], ...]) -> bytes:
    """The request's bytes; cached, as ps asks the same question of the same project over and over."""
    target = f"/v{api_version}{quote(path)}" + (f"?{urlencode(query)}" if query else "")
    return f"GET {target} HTTP/1.1\r\nHost: docker\r\nUser-Agent: compose-agent\r\nConnection: close\r\n\r\n".encode(
        "ascii"
    )


def _message(body: bytes) -> str:
    try:
        decoded = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(decoded, dict) and "message" in decoded:
        return str(decoded["message"])[:500]
    return str(decoded)[:200]
