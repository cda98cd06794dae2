"""Byte channels to an engine: a Unix socket, TCP with or without TLS, or ``ssh ... docker system dial-stdio``.

Each is a plain non-blocking socket driven through the running loop's ``sock_*`` methods, so that
no kept channel belongs to an event loop: a pool outlives the loop that filled it, and a test's
loop closes without a transport left behind. TLS runs over the socket through an ``SSLObject`` and
memory buffers for the same reason. The ssh channel is the socket end of a socket pair whose other
end is the stdin and stdout of an ``ssh`` process (the docker CLI's own way to reach an engine over
SSH, so the user's ssh config, keys and known hosts apply); one process serves request after
request for as long as the channel is kept.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import ssl
import subprocess
from collections.abc import Sequence
from contextlib import suppress
from typing import Protocol

__all__ = ["Channel", "Connector", "SshConnector", "TcpConnector", "UnixConnector", "tls_context"]

logger = logging.getLogger(__name__)

_RECEIVE = 256 * 1024
# ssh processes whose channel closed, reaped as later channels open and close (no zombies, no waiting).
_ENDED: list[subprocess.Popen[bytes]] = []


class Connector(Protocol):
    """Opens new channels to one engine; ``address`` names it in messages."""

    address: str

    async def open(self) -> Channel: ...


class Channel:
    """One byte stream to the engine over a non-blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def receive(self) -> bytes:
        """The next bytes the engine sent; ``b""`` once it closed the stream."""
        return await asyncio.get_running_loop().sock_recv(self.sock, _RECEIVE)

    def idle_and_open(self) -> bool:
        """For a kept channel about to be reused: the engine sent nothing since and has not closed it."""
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # closed (b"") or something unasked for: either way, not a channel to send on

    def ended(self) -> str | None:
        """What the far side said when the channel ended, if it can tell (ssh does)."""
        return None

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class TlsChannel(Channel):
    """TLS over the socket with an ``SSLObject``: nothing of it is bound to an event loop."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_hostname: str) -> None:
        super().__init__(sock)
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_hostname=server_hostname)

    async def handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise ConnectionResetError("the engine closed the connection during the TLS handshake") from None
        await self._flush()

    async def _flush(self) -> None:
        if self._out.pending:
            await super().send(self._out.read())

    async def _fill(self) -> bool:
        data = await super().receive()
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()
        return bool(data)

    async def send(self, data: bytes) -> None:
        self._tls.write(data)
        await self._flush()

    async def receive(self) -> bytes:
        while True:
            try:
                data = self._tls.read(_RECEIVE)
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    return b""
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            await self._flush()  # TLS 1.3 may answer something of its own (a key update)
            return data

    def idle_and_open(self) -> bool:
        # An idle TLS channel may have unread records that are not data: session tickets Go's TLS
        # sends after the handshake. Take them in; only data or a close makes the channel unusable.
        while True:
            try:
                data = self.sock.recv(_RECEIVE)
            except BlockingIOError:
                break
            except OSError:
                return False
            if not data:
                return False
            self._in.write(data)
        try:
            self._tls.read(_RECEIVE)
        except ssl.SSLWantReadError:
            return not self._out.pending  # a reply the protocol wants sent would need the loop
        except ssl.SSLError:
            return False
        return False


class ProcessChannel(Channel):
    """The socket end of an ``ssh`` process's stdin and stdout; closing it ends the process."""

    def __init__(self, sock: socket.socket, process: subprocess.Popen[bytes], stderr: int) -> None:
        super().__init__(sock)
        self.process = process
        self._stderr = stderr
        self._said = b""

    def ended(self) -> str | None:
        if self.closed:
            return None  # its descriptor may already belong to some other file
        try:
            while len(self._said) < 4096:
                chunk = os.read(self._stderr, 4096)
                if not chunk:
                    break
                self._said += chunk
        except (BlockingIOError, OSError):
            pass
        text = self._said.decode("utf-8", "replace").strip()
        if text:
            return text.splitlines()[-1][:300]
        code = self.process.poll()
        return None if code is None else f"ssh exited with status {code}"

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        os.close(self._stderr)
        if self.process.poll() is None:
            # An ssh to a host that stopped answering would wait for it; nothing is left to say anyway.
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
            _ENDED.append(self.process)
        _reap()


def _reap() -> None:
    for process in list(_ENDED):
        if process.poll() is not None:
            _ENDED.remove(process)


class UnixConnector:
    """Channels to a Unix socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.address = f"unix://{path}"

    async def open(self) -> Channel:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, self.path)
        except BaseException:
            sock.close()
            raise
        return Channel(sock)


class TcpConnector:
    """Channels to ``host:port``, with TLS when given a context."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.context = host, port, context
        self.address = f"tcp://{host}:{port}" if ":" not in host else f"tcp://[{host}]:{port}"

    async def open(self) -> Channel:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, target = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _keep_alive(sock)
            await loop.sock_connect(sock, target)
            if self.context is None:
                return Channel(sock)
            channel = TlsChannel(sock, self.context, self.host)
            await channel.handshake()
            return channel
        except BaseException:
            sock.close()
            raise


def _keep_alive(sock: socket.socket) -> None:
    """TCP keepalives after 30 s of quiet: a host that vanished (powered off, unplugged) ends the event
    stream within about a minute, so the watcher reconnects, instead of a stream that waits forever."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class SshConnector:
    """Channels through ``ssh``: each one a process running ``docker system dial-stdio`` on the host."""

    def __init__(self, argv: Sequence[str], address: str, *, hint: str | None = None) -> None:
        self.argv = list(argv)
        self.address = address
        self.hint = hint
        #: ssh processes started, for the record (and for tests that count them).
        self.started = 0

    async def open(self) -> Channel:
        ours, theirs = socket.socketpair()
        read_end, write_end = os.pipe()
        try:
            os.set_blocking(read_end, False)
            ours.setblocking(False)
            # A session of its own: no terminal to prompt on, and the whole group ends with it.
            process = subprocess.Popen(
                self.argv,
                stdin=theirs.fileno(),
                stdout=theirs.fileno(),
                stderr=write_end,
                start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            os.close(read_end)
            ours.close()
            raise
        finally:
            theirs.close()
            os.close(write_end)
        self.started += 1
        _reap()
        return ProcessChannel(ours, process, read_end)


def tls_context(ca: str, cert: str | None, key: str | None) -> ssl.SSLContext:
    """A client context as Docker's: the engine's certificate checked against ``ca``, TLS 1.2 at least.

    Raises:
        ssl.SSLError, OSError: a file that is not a certificate or key (the caller says which folder).
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    return context
