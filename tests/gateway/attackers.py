"""Callers without a token, as an attacker runs them: connection floods and slow requests, on real sockets.

Each runs in a thread of its own (plain blocking sockets: an attacker needs no event loop), until
stopped, and counts what it managed.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Flood", "open_descriptors", "local_address", "read_until_closed"]


@dataclass
class Flood:
    """Opens up to ``count`` connections to ``host:port`` and holds them; with ``slow``, each sends a
    request head a byte at a time (a slowloris), else nothing at all."""

    host: str
    port: int
    count: int
    slow: bool = False
    byte_interval: float = 0.5
    opened: int = 0
    failed: int = 0
    closed_by_server: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _sockets: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Flood:
        opener = threading.Thread(target=self._open_all, name="flood-open", daemon=True)
        opener.start()
        self._threads.append(opener)
        if self.slow:
            trickler = threading.Thread(target=self._trickle, name="flood-trickle", daemon=True)
            trickler.start()
            self._threads.append(trickler)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def __enter__(self) -> Flood:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _open_all(self) -> None:
        for _ in range(self.count):
            if self._stop.is_set():
                return
            try:
                sock = socket.create_connection((self.host, self.port), timeout=2)
            except OSError:
                self.failed += 1
                continue
            sock.setblocking(False)
            if self.slow:
                try:
                    sock.send(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                except OSError:
                    pass
            with self._lock:
                self._sockets.append(sock)
            self.opened += 1

    def _trickle(self) -> None:
        while not self._stop.wait(self.byte_interval):
            with self._lock:
                alive = []
                for sock in self._sockets:
                    try:
                        sock.send(b"X")
                        alive.append(sock)
                    except OSError:
                        self.closed_by_server += 1
                        sock.close()
                self._sockets[:] = alive


def open_descriptors(pid: int) -> int:
    """How many file descriptors ``pid`` has open now."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def local_address() -> str:
    """An IPv4 address of this machine that is not loopback: the gateway sees it as another peer.

    Every machine these tests run on has one: the Docker engine's bridge (docker0), if nothing else.
    """
    for _, name in socket.if_nameindex():
        if name == "lo":
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                # SIOCGIFADDR: the interface's IPv4 address, in a struct ifreq.
                answer = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on it
        return socket.inet_ntoa(answer[20:24])
    raise AssertionError("this machine has no IPv4 address but loopback; is the Docker engine running?")


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or ``limit`` seconds pass), and how long that took."""
    started = time.monotonic()
    sock.settimeout(0.2)
    data = b""
    while time.monotonic() - started < limit:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - started


def stderr_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0
