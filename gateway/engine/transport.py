"""HTTP/1.1 to the Engine API over kept channels: the one transport of every engine call.

``ps`` is the gateway's hottest call, and a general HTTP client made its one Engine request the
biggest cost of it (docs/performance.md: docker-py in a worker thread cost about 1.4 ms of CPU
per call under 8 concurrent clients, this client about 0.3 ms, and httpx2 sits between). It speaks
what the Engine API needs: a request with an optional JSON body, and an answer framed by
``Content-Length``, chunked, or read to the end; a whole answer, or its body as blocks while it
streams (logs, events).

Channels (:mod:`gateway.engine.channels`: Unix socket, TCP, TLS, ssh) are kept and reused: opening
one was a third of what a listing cost over a Unix socket, and over SSH it is a process and a
handshake. A kept channel is checked before it is reused, and a ``GET`` that meets a channel the
engine closed meanwhile is sent again on a new one.
"""

from __future__ import annotations

import functools
import json
import logging
import ssl
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlencode

import anyio

from ..errors import EngineUnavailable, GatewayError
from .channels import Channel, Connector, UnixConnector

__all__ = ["EngineHTTP", "EngineRefused", "Response", "error_message", "request_target"]

logger = logging.getLogger(__name__)

_MAX_HEAD = 64 * 1024
_MAX_BODY = 256 * 1024 * 1024  # a listing of thousands of containers is a few MB; this bounds a broken peer
_RAISE: Any = object()
# Connectors may say what to check when they cannot be reached; these are the defaults by kind.
_HINTS = {
    "unix": "check that dockerd is running and that this process may open its socket",
    "tcp": "check that the engine listens there and that this machine can reach it",
    "ssh": "check that `ssh HOST docker version` works for the gateway's user",
}


class EngineRefused(GatewayError):
    """The engine answered with an error status; ``status`` and ``reason`` are its own."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"Docker engine error: {status} {reason}")
        self.status = status
        self.reason = reason


class _Gone(Exception):
    """The engine closed the channel; ``answered`` says whether any of its answer had come."""

    def __init__(self, answered: bool) -> None:
        super().__init__("the Docker engine closed the connection")
        self.answered = answered


class _Reader:
    """A channel with its read buffer."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.buffer = bytearray()
        self.received = 0

    async def fill(self) -> None:
        chunk = await self.channel.receive()
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
            await self.fill()


class Response:
    """An answer's status and headers; its body is read whole (:meth:`read`) or block by block (:meth:`blocks`)."""

    def __init__(self, reader: _Reader, status: int, headers: dict[str, str], keep: bool, *, head: bool) -> None:
        self._reader = reader
        self.status = status
        self.headers = headers
        self.keep = keep
        self.done = False
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._left: int | None = None  # of a length-delimited body
        self._data_left = self._crlf_left = 0  # of the current chunk
        if head or status in (204, 304) or 100 <= status < 200:
            self.done = True
        elif not self._chunked:
            if "content-length" in headers:
                self._left = int(headers["content-length"])
                if self._left > _MAX_BODY:
                    raise GatewayError("the Docker engine sent an oversized answer")
                self.done = self._left == 0
            else:
                self.keep = False  # the body ends when the engine closes the channel

    async def read(self, limit: int = _MAX_BODY) -> bytes:
        """The whole body (at most ``limit`` bytes)."""
        parts = []
        total = 0
        async for block in self.blocks():
            total += len(block)
            if total > limit:
                raise GatewayError("the Docker engine sent an oversized answer")
            parts.append(block)
        return b"".join(parts)

    async def blocks(self, idle_timeout: float | None = None) -> AsyncIterator[bytes]:
        """The body as it arrives: whatever is in hand at a time, so many small chunks cost one block.

        ``idle_timeout`` bounds each wait for more (a stalled engine), not the whole body.
        """
        reader = self._reader
        while not self.done:
            block = self._take()
            if block:
                yield block
            if self.done:
                return
            try:
                with anyio.fail_after(idle_timeout):
                    await reader.fill()
            except _Gone:
                if self._chunked or self._left is not None:
                    raise
                self.done = True  # read to the end: the end is here
                tail = self._take_all()
                if tail:
                    yield tail

    def _take_all(self) -> bytes:
        data = bytes(self._reader.buffer)
        self._reader.buffer.clear()
        return data

    def _take(self) -> bytes:
        buffer = self._reader.buffer
        if not self._chunked:
            if self._left is None:
                return self._take_all()
            size = min(self._left, len(buffer))
            data = bytes(buffer[:size])
            del buffer[:size]
            self._left -= size
            self.done = self._left == 0
            return data
        out = bytearray()
        while True:
            if self._data_left:
                size = min(self._data_left, len(buffer))
                out += buffer[:size]
                del buffer[:size]
                self._data_left -= size
                if self._data_left:
                    break
            if self._crlf_left:
                size = min(self._crlf_left, len(buffer))
                del buffer[:size]
                self._crlf_left -= size
                if self._crlf_left:
                    break
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                if len(buffer) > 1024:
                    raise GatewayError("the Docker engine sent a malformed chunked answer")
                break
            size = int(bytes(buffer[:line_end]).split(b";", 1)[0].strip(), 16)
            if size == 0:
                # No trailers are sent: the last-chunk line is followed by one CRLF.
                if len(buffer) < line_end + 4:
                    break
                del buffer[: line_end + 4]
                self.done = True
                break
            del buffer[: line_end + 2]
            self._data_left, self._crlf_left = size, 2
        return bytes(out)


class EngineHTTP:
    """Requests to one engine over kept channels from ``connector`` (a Unix socket path is taken as one).

    Keeps up to ``keep`` idle channels for the next requests; :meth:`close` closes them. Nothing here
    is bound to an event loop.
    """

    def __init__(self, connector: Connector | str, *, timeout: float = 10.0, keep: int = 8) -> None:
        self.connector: Connector = UnixConnector(connector) if isinstance(connector, str) else connector
        self.timeout = timeout
        self.keep = keep
        #: How messages name the engine: "at <address>" unless the owner says better.
        self.label = f"at {self.connector.address}"
        #: Channels opened so far: a kept one serves request after request, so this grows only with concurrency.
        self.opened = 0
        self._idle: list[Channel] = []
        # Channels still idle when this object goes are closed then, not left to warn in the GC.
        weakref.finalize(self, _close_all, self._idle)

    @property
    def address(self) -> str:
        return self.connector.address

    def close(self) -> None:
        """Close the idle channels (requests in flight close theirs when they end)."""
        _close_all(self._idle)

    async def get_json(
        self, api_version: str, path: str, query: dict[str, str] | None = None, *, missing: Any = _RAISE
    ) -> Any:
        """The decoded JSON answer of ``GET /v<api_version><path>?<query>``; ``missing`` for a 404 if given.

        Raises:
            EngineUnavailable: the engine cannot be reached, the connection broke, or no answer in time.
            EngineRefused: the engine answered with an error status (its message is kept).
        """
        target = request_target(f"/v{api_version}{path}", tuple(sorted((query or {}).items())))
        status, body = await self.fetch("GET", target)
        if status == 404 and missing is not _RAISE:
            return missing
        if status >= 400:
            raise EngineRefused(status, error_message(body))
        return json.loads(body)

    async def fetch(self, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One whole answer's status and body, within :attr:`timeout`.

        Raises:
            EngineUnavailable: the engine cannot be reached, the connection broke, or no answer in time.
        """
        try:
            with anyio.fail_after(self.timeout):
                async with self.request(method, target, body) as response:
                    return response.status, await response.read()
        except TimeoutError as exc:
            raise EngineUnavailable(self.unreachable(f"no answer within {self.timeout:g} s")) from exc

    @asynccontextmanager
    async def request(self, method: str, target: str, body: bytes | None = None) -> AsyncIterator[Response]:
        """Send one request; the answer's head is in hand on entry, its body is the caller's to read.

        The channel goes back to the pool only if the body was read to its end. No deadline here:
        the caller sets one (a stream's body may rightly take its time).

        Raises:
            EngineUnavailable: the engine cannot be reached, or the connection broke.
        """
        data = _request(method, target, body)
        while True:
            channel, reused = self._take()
            try:
                if channel is None:
                    channel = await self.connector.open()
                    self.opened += 1
                reader = _Reader(channel)
                await channel.send(data)
                response = await _read_head(reader, head=method == "HEAD")
            except (_Gone, OSError) as exc:  # OSError covers ssl.SSLError and ConnectionError
                retry = reused and method == "GET" and isinstance(exc, _Gone | ConnectionError)
                if retry and not (isinstance(exc, _Gone) and exc.answered):
                    assert channel is not None
                    channel.close()
                    continue  # closed by the engine while idle: unanswered, so send it anew
                message = self.unreachable(exc, channel)  # before closing: an ssh channel reads what ssh said
                if channel is not None:
                    channel.close()
                raise EngineUnavailable(message) from exc
            except BaseException:
                if channel is not None:
                    channel.close()  # cancelled or broken mid-answer: what is left on it is unknown
                raise
            break
        try:
            yield response
        except TimeoutError as exc:  # a stream's idle timeout (Response.blocks): the engine stalled mid-answer
            channel.close()
            raise EngineUnavailable(self.unreachable("it stopped sending in the middle of an answer")) from exc
        except (_Gone, OSError) as exc:
            message = self.unreachable(exc, channel)
            channel.close()
            raise EngineUnavailable(message) from exc
        except BaseException:
            channel.close()
            raise
        if response.done and response.keep and not reader.buffer and len(self._idle) < self.keep:
            self._idle.append(channel)
        else:
            channel.close()

    def _take(self) -> tuple[Channel | None, bool]:
        while self._idle:
            channel = self._idle.pop()
            if channel.idle_and_open():
                return channel, True
            channel.close()
        return None, False

    def unreachable(self, exc: BaseException | str, channel: Channel | None = None) -> str:
        """The message of an :class:`EngineUnavailable`: the engine's address, what happened, what to check."""
        said = channel.ended() if channel is not None else None
        reason = said or _reason(exc)
        scheme = self.address.partition("://")[0]
        hint = getattr(self.connector, "hint", None) or _HINTS.get(scheme, "")
        return f"cannot reach the Docker engine {self.label} ({reason}); {hint}"


def _reason(exc: BaseException | str) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS: the engine's certificate was not accepted: {exc.verify_message}; it must be signed by the CA "
            "in ca.pem and name the address the gateway dials"
        )
    if isinstance(exc, ssl.SSLError):
        text = str(exc.reason or exc)
        if any(word in text for word in ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA")):
            return f"TLS: the engine refused this client's certificate ({text}): give cert.pem and key.pem it trusts"
        return f"TLS: {text}"
    text = str(exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__


async def _read_head(reader: _Reader, *, head: bool) -> Response:
    text = (await reader.read_until(b"\r\n\r\n", _MAX_HEAD)).decode("latin-1")
    status_line, _, header_text = text.partition("\r\n")
    protocol, _, rest = status_line.partition(" ")
    if not protocol.startswith("HTTP/"):
        raise GatewayError(f"the Docker engine did not answer in HTTP ({status_line[:60]!r}); is this a TLS port?")
    status = int(rest.split(" ", 1)[0])
    headers: dict[str, str] = {}
    for line in header_text.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    keep = protocol == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    return Response(reader, status, headers, keep, head=head)


@functools.lru_cache(maxsize=1024)
def request_target(path: str, query: tuple[tuple[str, str], ...] = ()) -> str:
    """``path`` quoted, with its query; cached, as ps asks the same question of the same project over and over."""
    return quote(path) + (f"?{urlencode(query)}" if query else "")


def _request(method: str, target: str, body: bytes | None) -> bytes:
    if body is None:
        return _bodiless(method, target)
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: docker\r\nUser-Agent: compose-agent\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


@functools.lru_cache(maxsize=1024)
def _bodiless(method: str, target: str) -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: docker\r\nUser-Agent: compose-agent\r\n\r\n".encode("ascii")


def _close_all(channels: list[Channel]) -> None:
    while channels:
        channels.pop().close()


def error_message(body: bytes) -> str:
    """The message of an engine's error answer (its JSON ``message``, else the start of the text)."""
    try:
        decoded = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(decoded, dict) and "message" in decoded:
        return str(decoded["message"])[:500]
    return str(decoded)[:200]
