"""The Docker events stream for one container, followed in a worker thread.

Reading the stream blocks, so :meth:`EventStream.follow` runs in a thread (through
``anyio.to_thread.run_sync``) and hands each event to a callback that feeds an anyio memory
stream. When the stream drops it reconnects with ``since`` set to the last event it saw, so an
event that happened while it was disconnected is replayed, not lost.

The request goes through the docker-py client's own HTTP session (``client.api`` is a
``requests.Session`` with the engine's transport mounted) rather than ``client.api.events``: the
stream that call returns can be interrupted but its socket cannot be released without reaching
into its private response. A plain streamed response can be shut from another thread
(``response.raw.shutdown()``, urllib3's way to end a blocked read) and closed, both public.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["EventStream"]

logger = logging.getLogger(__name__)

_MAX_RECONNECT_DELAY = 5.0


def _event_key(event: dict[str, Any]) -> tuple[object, ...]:
    return (event.get("timeNano"), event.get("id"), event.get("Action") or event.get("status"))


def _shut(response: Any) -> None:
    """Shut the response's socket so that a read blocked on it returns; harmless if already shut or closed."""
    try:
        response.raw.shutdown()
    except (OSError, ValueError, RuntimeError):  # urllib3: already closed, or released to its pool
        pass


class EventsRefused(Exception):
    """The engine answered the events request with an error status."""


class EventStream:
    """Follows the engine's container events for ``target`` (a name or an ID) until closed."""

    def __init__(self, client: Any, target: str, reconnect_delay: float = 0.5) -> None:
        #: The docker-py ``DockerClient``; the supervisor replaces it after a new negotiation, and the
        #: next connection uses the new one.
        self.client = client
        self._target = target
        self._reconnect_delay = reconnect_delay
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._response: Any = None
        self._deliberate = False  # the current stream was shut on purpose: its end is no warning
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
                response = self._open()
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
                self._response = response
                self._deliberate = False
                if self._closed.is_set():
                    _shut(response)
            self.connections += 1
            self.connected.set()
            if failures:
                logger.info("event=events_recovered target=%s failures=%d", self._target, failures)
                failures = 0
            logger.debug("event=events_connected target=%s since=%s", self._target, self.since)
            try:
                for event in _events(response):
                    delay = self._reconnect_delay
                    if self._is_new(event):
                        deliver(event)
            except Exception as exc:  # noqa: BLE001 - whatever broke the stream, the cure is to reconnect
                level = logging.DEBUG if self._deliberate else logging.WARNING
                logger.log(level, "event=events_dropped target=%s error=%r", self._target, exc)
            finally:
                self.connected.clear()
                with self._lock:
                    self._response = None
                    _shut(response)
                    response.close()  # releases the socket's file descriptor now, not at garbage collection
            if not self._closed.is_set():
                logger.info("event=events_reconnecting target=%s since=%s", self._target, self.since)
                self._closed.wait(self._reconnect_delay)

    def _open(self) -> Any:
        """GET /events as docker-py's ``events`` would, streamed, for the target's container events."""
        api = self.client.api
        response = api.get(
            f"{api.base_url}/v{api.api_version}/events",
            params={
                "since": self.since,
                "filters": json.dumps({"type": ["container"], "container": [self._target]}),
            },
            stream=True,
            timeout=None,  # the stream is quiet until something happens; drop() and close() end it
        )
        if response.status_code != 200:
            try:
                raise EventsRefused(f"HTTP {response.status_code}: {response.text[:300]}")
            finally:
                response.close()
        return response

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
            if self._response is not None:
                self._deliberate = True
                _shut(self._response)

    def close(self) -> None:
        """Stop following; makes a blocked :meth:`follow` return. Safe from any thread."""
        self._closed.set()
        self.drop()


def _events(response: Any) -> Iterator[dict[str, Any]]:
    """The engine's events, one JSON object a line, as they arrive."""
    for line in response.iter_lines():
        if line:
            event: dict[str, Any] = json.loads(line)
            yield event
