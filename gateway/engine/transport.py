"""A small async client for the Engine API's read endpoints, over its Unix socket.

``ps`` is the gateway's hottest call, and docker-py made its one Engine request the biggest cost
of it: requests' per-call machinery, plus a worker-thread hop whose GIL hand-offs grow with
concurrency. Measured under 8 concurrent clients, that path cost about 1.4 ms of CPU per call;
this client, on the event loop, about 0.3 ms (see docs/performance.md). It speaks only what
those reads need: ``GET`` with a JSON answer, ``Content-Length`` or chunked.

Connections are kept alive and reused: opening one (the ``connect``, the engine's accept, the
close) was a third of what a listing cost the gateway under load. The idle ones are plain
non-blocking sockets driven through the running loop's ``sock_*`` methods, so no pool is bound to
an event loop, and a test's loop can close without leaving a transport behind. A kept connection
the engine has closed meanwhile is noticed before any answer arrives and the ``GET`` is sent again
on a new one. Everything else (writes, logs, TCP engines) stays with docker-py in
:mod:`gateway.engine.client`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import weakref
from typing import Any
from urllib.parse import quote, urlencode

import anyio

from ..errors import EngineUnavailable, GatewayError

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


class _Gone(Exception):
    """The engine closed the connection; ``answered`` says whether any of its answer had come."""

    def __init__(self, answered: bool) -> None:
        super().__init__("the Docker engine closed the connection")
        self.answered = answered


class _Connection:
    """One connection to the engine, with its read buffer."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.loop = loop
        self.buffer = bytearray()
        self.received = 0

    async def _fill(self) -> None:
        chunk = await self.loop.sock_recv(self.sock, 65536)
        if not chunk:
            raise _Gone(answered=self.received > 0)
        self.received += len(chunk)
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
        except _Gone:
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


class EngineHTTP:
    """``GET`` JSON from the Engine API over a Unix socket, on the running asyncio loop.

    Keeps up to ``keep`` idle connections for the next requests; :meth:`close` closes them.
    """

    def __init__(self, socket_path: str, *, timeout: float = 10.0, keep: int = 8) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.keep = keep
        self._idle: list[socket.socket] = []
        # Sockets still idle when this object goes are closed then, not left to warn in the GC.
        weakref.finalize(self, _close_all, self._idle)

    def close(self) -> None:
        """Close the idle connections (requests in flight close theirs when they end)."""
        _close_all(self._idle)

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
                status, body = await self._ask(request)
        except TimeoutError as exc:
            raise EngineUnavailable(self._unreachable(f"no answer within {self.timeout:g} s")) from exc
        except (_Gone, OSError) as exc:
            raise EngineUnavailable(self._unreachable(exc)) from exc
        if status == 404 and missing is not _RAISE:
            return missing
        if status >= 400:
            raise EngineRefused(status, _message(body))
        return json.loads(body)

    async def _ask(self, request: bytes) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        while True:
            reused = bool(self._idle)
            sock = self._idle.pop() if reused else await self._connect(loop)
            try:
                status, body, keep = await self._exchange(_Connection(sock, loop), request)
            except (_Gone, ConnectionError) as exc:
                sock.close()
                if reused and not (isinstance(exc, _Gone) and exc.answered):
                    continue  # closed by the engine while idle: this GET has not been answered, send it anew
                raise
            except BaseException:
                sock.close()  # cancelled or broken mid-answer: what is left on it is unknown
                raise
            if keep and len(self._idle) < self.keep:
                self._idle.append(sock)
            else:
                sock.close()
            return status, body

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, self.socket_path)
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    async def _exchange(connection: _Connection, request: bytes) -> tuple[int, bytes, bool]:
        """Send ``request``; the answer's status and body, and whether the connection may serve another."""
        await connection.loop.sock_sendall(connection.sock, request)
        head = (await connection.read_until(b"\r\n\r\n", _MAX_HEAD)).decode("latin-1")
        status_line, _, header_text = head.partition("\r\n")
        protocol, _, rest = status_line.partition(" ")
        status = int(rest.split(" ", 1)[0])
        headers: dict[str, str] = {}
        for line in header_text.split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        keep = protocol == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
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
            return status, b"".join(parts), keep
        if "content-length" in headers:
            length = int(headers["content-length"])
            if length > _MAX_BODY:
                raise GatewayError("the Docker engine sent an oversized answer")
            return status, await connection.read_exactly(length), keep
        return status, await connection.read_to_eof(), False

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
    return f"GET {target} HTTP/1.1\r\nHost: docker\r\nUser-Agent: compose-agent\r\n\r\n".encode("ascii")


def _close_all(sockets: list[socket.socket]) -> None:
    while sockets:
        sockets.pop().close()


def _message(body: bytes) -> str:
    try:
        decoded = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(decoded, dict) and "message" in decoded:
        return str(decoded["message"])[:500]
    return str(decoded)[:200]
