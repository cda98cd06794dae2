"""The Docker events stream for one container, followed in a worker thread.

docker-py's events call blocks, so :meth:`EventStream.follow` runs in a thread (through
``anyio.to_thread.run_sync``) and hands each event to a callback that feeds an anyio memory
stream. When the stream drops it reconnects with ``since`` set to the last event it saw, so an
event that happened while it was disconnected is replayed, not lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["EventStream"]

logger = logging.getLogger(__name__)

_MAX_RECONNECT_DELAY = 5.0


def _event_key(event: dict[str, Any]) -> tuple[object, ...]:
    return (event.get("timeNano"), event.get("id"), event.get("Action") or event.get("status"))


def _shut(stream: Any) -> None:
    """Shut the stream's socket so that a read blocked on it returns; harmless if already shut."""
    try:
        stream.close()
    except OSError:
        pass


class EventStream:
    """Follows the engine's container events for ``target`` (a name or an ID) until closed."""

    def __init__(self, client: Any, target: str, reconnect_delay: float = 0.5) -> None:
        self._client = client
        self._target = target
        self._reconnect_delay = reconnect_delay
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._stream: Any = None
        #: Set while a stream is open; cleared when it drops. Tests and the bench wait on it.
        self.connected = threading.Event()
        #: How many times the stream was (re)opened.
        self.connections = 0
        # ``since`` for the next connection, in nanoseconds, and the events already seen at that instant.
        self._since_nano = time.time_ns()
        self._seen_at_since: set[tuple[object, ...]] = set()

    @property
    def since(self) -> str:
        """The engine's ``since`` for the next connection, as "seconds.nanoseconds"."""
        return f"{self._since_nano // 1_000_000_000}.{self._since_nano % 1_000_000_000:09d}"

    def follow(self, deliver: Callable[[dict[str, Any]], None]) -> None:
        """Block, delivering every event for the target, until :meth:`close` is called."""
        delay = self._reconnect_delay
        failures = 0  # in a row: one WARNING per outage, not one per try
        while not self._closed.is_set():
            try:
                stream = self._client.api.events(
                    since=self.since,
                    filters={"type": "container", "container": self._target},
                    decode=True,
                )
            except Exception as exc:  # noqa: BLE001 - docker-py lets requests' errors through unwrapped
                failures += 1
                logger.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "event=events_unavailable target=%s error=%r retry_in_s=%.1f failures=%d",
                    self._target,
                    exc,
                    delay,
                    failures,
                )
                self._closed.wait(delay)
                delay = min(max(delay * 2, 0.1), _MAX_RECONNECT_DELAY)
                continue
            with self._lock:
                self._stream = stream
                if self._closed.is_set():
                    _shut(stream)
            self.connections += 1
            self.connected.set()
            if failures:
                logger.info("event=events_recovered target=%s failures=%d", self._target, failures)
                failures = 0
            logger.debug("event=events_connected target=%s since=%s", self._target, self.since)
            try:
                for event in stream:
                    delay = self._reconnect_delay
                    if self._is_new(event):
                        deliver(event)
            except Exception as exc:  # noqa: BLE001 - whatever broke the stream, the cure is to reconnect
                logger.warning("event=events_dropped target=%s error=%r", self._target, exc)
            finally:
                self.connected.clear()
                with self._lock:
                    self._stream = None
                    _shut(stream)
                    # The socket's file descriptor is only released once the response lets go of it.
                    response = getattr(stream, "_response", None)
                    if response is not None:
                        response.close()
            if not self._closed.is_set():
                logger.info("event=events_reconnecting target=%s since=%s", self._target, self.since)
                self._closed.wait(self._reconnect_delay)

    def _is_new(self, event: dict[str, Any]) -> bool:
        """Advance ``since``; drop the events a reconnect replays from the boundary nanosecond."""
        time_nano = event.get("timeNano")
        if not isinstance(time_nano, int):
            return True
        key = _event_key(event)
        if time_nano > self._since_nano:
            self._since_nano = time_nano
            self._seen_at_since = {key}
            return True
        if time_nano < self._since_nano or key in self._seen_at_since:
            return False
        self._seen_at_since.add(key)
        return True

    def drop(self) -> None:
        """Close the current HTTP stream without stopping: the follower reconnects with ``since``."""
        with self._lock:
            if self._stream is not None:
                _shut(self._stream)

    def close(self) -> None:
        """Stop following; makes a blocked :meth:`follow` return. Safe from any thread."""
        self._closed.set()
        self.drop()
