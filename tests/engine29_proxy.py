"""A Unix-socket proxy in front of the local engine that behaves as Docker Engine 29 does, in one respect.

No Engine 29 installs here (Debian 12 ships 20.10), so the tests put this in front of the real
engine. It emulates exactly one behaviour of Engine 29 (November 2025), its API version window:

- ``/_ping`` answers with the header ``Api-Version: 1.52`` (every answer carries that header);
- ``/version`` reports ``ApiVersion`` 1.52 and ``MinAPIVersion`` 1.44;
- a versioned path below v1.44 gets HTTP 400 with the engine's exact message
  (``client version 1.41 is too old. Minimum supported API version is 1.44, please upgrade your
  client to a newer version``), and one above v1.52 gets "too new";
- everything else is forwarded to the real engine with the path's version rewritten to v1.41.

Everything else (the containers, the logs, the events) is the real engine's. Forwarded requests ask
the engine to close the connection after the answer, so the proxy never has to find where an
answer ends: it copies bytes both ways until the engine closes. That makes streamed answers (logs,
events) and hijacked connections (``attach``, answered ``101 UPGRADED``) work unchanged, with
half-closes passed on, which is what ``docker compose up/ps/logs/down`` and the docker CLI need.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

__all__ = ["API_VERSION", "MIN_API_VERSION", "TOO_OLD", "Engine29Proxy", "engine29_proxy"]

API_VERSION = "1.52"
MIN_API_VERSION = "1.44"
UPSTREAM_VERSION = "1.41"
TOO_OLD = (
    "client version {version} is too old. Minimum supported API version is 1.44, "
    "please upgrade your client to a newer version"
)
TOO_NEW = "client version {version} is too new. Maximum supported API version is 1.52"
_VERSIONED = re.compile(r"/v(\d+)\.(\d+)(/.*)")
_CHUNK = 64 * 1024
# Plain asyncio streams rather than anyio's: anyio 4.16's raw Unix sockets log an InvalidStateError
# whenever a pending receive is cancelled, which here happens at the end of every forwarded request.
_GONE = (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


@dataclass
class Engine29Proxy:
    """Serves ``path``; forwards to the engine's socket at ``upstream``. Records what it was asked."""

    path: Path
    upstream: str
    #: (method, path as the client sent it) for every request, in order.
    requests: list[tuple[str, str]] = field(default_factory=list)
    #: The decoded query of each of those requests.
    queries: list[str] = field(default_factory=list)
    #: Requests refused for their API version.
    refused: list[str] = field(default_factory=list)
    #: False makes it a plain pass-through (the local engine as it is): a test flips it to play an upgrade.
    engine29: bool = True
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    #: Every stream still open, both sides: ``stop`` waits until each has really closed its socket.
    _writers: set[asyncio.StreamWriter] = field(default_factory=set, repr=False)
    _server: asyncio.AbstractServer | None = field(default=None, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)

    @property
    def docker_host(self) -> str:
        return f"unix://{self.path}"

    def versions_seen(self) -> set[str]:
        """The API versions clients put in their paths (``1.45``, ...)."""
        return {m.group(1) + "." + m.group(2) for _, p in self.requests if (m := _VERSIONED.fullmatch(p))}

    def count(self, suffix: str, *, query_has: str = "") -> int:
        """How many requests had a path (version stripped, query dropped) equal to ``suffix``, and
        (when given) ``query_has`` in their decoded query."""
        total = 0
        for (_, p), query in zip(list(self.requests), list(self.queries), strict=False):
            match = _VERSIONED.fullmatch(p)
            total += (match.group(3) if match else p) == suffix and query_has in query
        return total

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_unix_server(self._accept, self.path)

    def drop_connections(self) -> None:
        """End every connection in flight, event streams included, as an engine restart would; keep
        listening. Callable from any thread but the proxy's own."""
        assert self._loop is not None, "start() first"
        asyncio.run_coroutine_threadsafe(self._drop(), self._loop).result(timeout=10)

    async def _drop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Stop listening and end every connection in flight."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # A closed transport lets go of its socket only on a later turn of the loop; the loop is
        # closed right after this, so wait for that turn here rather than leave sockets to the GC.
        for writer in list(self._writers):
            await _close(writer)
        if self._server is not None:
            await self._server.wait_closed()

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_unix_connection(self.upstream)
        self._writers.add(writer)
        return reader, writer

    async def _release(self, writer: asyncio.StreamWriter) -> None:
        # Forgotten only once closed: a stream whose close was cancelled is closed again by stop().
        await _close(writer)
        self._writers.discard(writer)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Known from the moment it is accepted: a connection whose task is cancelled before it ever
        # runs (by stop(), or drop_connections()) is still closed by stop(), not left to the GC.
        self._writers.add(writer)
        self._tasks.add(asyncio.get_running_loop().create_task(self._track(reader, writer)))

    async def _track(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            await self._handle(reader, writer)
        except (*_GONE, asyncio.CancelledError):
            pass  # cancelled by stop() or drop_connections(): ends quietly, not as a logged error
        finally:
            self._tasks.discard(task)
            await self._release(writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except _GONE:
            return
        request_line, *headers = head[:-4].decode("latin-1").split("\r\n")
        method, target, protocol = request_line.split(" ", 2)
        path, sep, query = target.partition("?")
        self.queries.append(unquote(query))
        self.requests.append((method, path))
        if not self.engine29:
            await self._forward(reader, writer, request_line, headers, rewrite=False)
            return
        match = _VERSIONED.fullmatch(path)
        rest = path
        if match:
            asked, rest = f"{match.group(1)}.{match.group(2)}", match.group(3)
            if _version(asked) < _version(MIN_API_VERSION):
                self.refused.append(path)
                await _refuse(writer, TOO_OLD.format(version=asked))
                return
            if _version(asked) > _version(API_VERSION):
                self.refused.append(path)
                await _refuse(writer, TOO_NEW.format(version=asked))
                return
        new_target = f"/v{UPSTREAM_VERSION}{rest}{sep}{query}"
        if rest == "/version":
            await self._version(writer, method, new_target, headers)
        else:
            await self._forward(reader, writer, f"{method} {new_target} {protocol}", headers)

    async def _version(self, writer: asyncio.StreamWriter, method: str, target: str, headers: list[str]) -> None:
        up_reader, up_writer = await self._open_upstream()
        try:
            kept = [h for h in headers if h.split(":", 1)[0].strip().lower() != "connection"]
            up_writer.write(_request(f"{method} {target} HTTP/1.1", [*kept, "Connection: close"]))
            raw = await up_reader.read()
        finally:
            await self._release(up_writer)
        head, _, body = raw.partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            body = _unchunk(body)
        info = json.loads(body)
        info["ApiVersion"], info["MinAPIVersion"] = API_VERSION, MIN_API_VERSION
        for component in info.get("Components") or []:
            details = component.get("Details") or {}
            if "ApiVersion" in details:
                details["ApiVersion"], details["MinAPIVersion"] = API_VERSION, MIN_API_VERSION
        patched = json.dumps(info).encode() + b"\n"
        writer.write(_head("200 OK", "application/json", len(patched)) + patched)
        await writer.drain()

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        line: str,
        headers: list[str],
        *,
        rewrite: bool = True,
    ) -> None:
        if not any(h.lower().startswith("upgrade:") for h in headers):
            # One request per connection: the engine closes after answering, and so do we.
            headers = [h for h in headers if h.split(":", 1)[0].strip().lower() not in ("connection", "keep-alive")]
            headers.append("Connection: close")
        up_reader, up_writer = await self._open_upstream()

        async def client_to_engine() -> None:
            # The request body, then (after a 101) whatever the client writes to a hijacked stream.
            with suppress(*_GONE):
                while data := await reader.read(_CHUNK):
                    up_writer.write(data)
                    await up_writer.drain()
                if up_writer.can_write_eof():
                    up_writer.write_eof()  # a client's half-close (stdin done) reaches the engine

        pump = asyncio.create_task(client_to_engine())
        try:
            up_writer.write(_request(line, headers))
            await up_writer.drain()
            head = await up_reader.readuntil(b"\r\n\r\n")
            writer.write(_rewrite_api_version(head) if rewrite else head)
            while data := await up_reader.read(_CHUNK):
                writer.write(data)
                await writer.drain()
        except _GONE:
            pass
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            await self._release(up_writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close ``writer`` and wait (briefly) until its socket is gone."""
    writer.close()
    with suppress(*_GONE, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), timeout=2)


async def _refuse(writer: asyncio.StreamWriter, message: str) -> None:
    body = json.dumps({"message": message}).encode() + b"\n"
    writer.write(_head("400 Bad Request", "application/json", len(body)) + body)
    await writer.drain()


def _request(line: str, headers: list[str]) -> bytes:
    return ("\r\n".join([line, *headers]) + "\r\n\r\n").encode("latin-1")


def _head(status: str, content_type: str, length: int) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nApi-Version: {API_VERSION}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


def _rewrite_api_version(head: bytes) -> bytes:
    ours = f"Api-Version: {API_VERSION}".encode()
    lines = head.split(b"\r\n")
    return b"\r\n".join(ours if line.lower().startswith(b"api-version:") else line for line in lines)


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2 :]
    return out


def _engine_socket(docker_host: str | None) -> str:
    if docker_host and docker_host.startswith("unix://"):
        return docker_host[len("unix://") :]
    return "/var/run/docker.sock"


@contextmanager
def engine29_proxy(docker_host: str | None = None) -> Iterator[Engine29Proxy]:
    """Run an Engine 29 emulating proxy on a fresh socket, in an event loop of its own, for the block.

    ``docker_host`` is the real engine's ``unix://`` address (default ``/var/run/docker.sock``).
    The socket lives in a short temporary folder: Unix socket paths must stay under 108 bytes.
    Its own thread and loop let sync tests, async tests and child processes all use it.
    """
    with tempfile.TemporaryDirectory(prefix="e29-", dir="/tmp") as folder:
        proxy = Engine29Proxy(Path(folder) / "engine.sock", _engine_socket(docker_host))
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="engine29-proxy", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(timeout=10)
            yield proxy
        finally:
            asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
