"""A log that stays bounded whatever happens: repeats are counted, not written.

Under attack the same few lines come thousands of times a second (an ``accept()`` that fails with
EMFILE, a traceback per failed request): 179 MB in 10 s, once. :class:`RepeatFilter`, on the
gateway's one log handler, lets the first ``burst`` records of each message through per interval,
counts the rest, and says how many it held back on the next record of that message it lets through.
Past ``total`` records an interval, whatever their message, it holds back the rest as well, so a
flood of distinct messages is bounded too.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["RepeatFilter", "AcceptFailures"]

_logger = logging.getLogger("gateway.edge")


@dataclass
class _Window:
    start: float
    passed: int = 0
    held: int = 0


class RepeatFilter(logging.Filter):
    """At most ``burst`` records of one message (logger, level, template) and ``total`` in all, per ``interval``."""

    def __init__(
        self,
        *,
        burst: int = 10,
        total: int = 500,
        interval: float = 10.0,
        max_messages: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.total = total
        self.interval = interval
        self.max_messages = max_messages
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, int, str], _Window] = {}
        self._all = _Window(clock())

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        with self._lock:
            held_overall = self._roll(self._all, now)
            window = self._windows.get(key)
            if window is None:
                if len(self._windows) >= self.max_messages:
                    self._forget_old(now)
                window = self._windows[key] = _Window(now)
            held = self._roll(window, now)
            window.passed += 1
            self._all.passed += 1
            if window.passed > self.burst or self._all.passed > self.total:
                window.held += 1
                self._all.held += 1
                return False
        notes = []
        if held:
            notes.append(f"{held} more like this in the previous {self.interval:g} s were not logged")
        if held_overall:
            notes.append(f"{held_overall} log lines in all were held back in the previous {self.interval:g} s")
        if notes:
            record.msg = f"{record.getMessage()} [{'; '.join(notes)}]"
            record.args = None
        return True

    def _roll(self, window: _Window, now: float) -> int:
        """Start a new interval for ``window`` if its own has ended; returns what the old one held back."""
        if now - window.start < self.interval:
            return 0
        held = window.held
        window.start, window.passed, window.held = now, 0, 0
        return held

    def _forget_old(self, now: float) -> None:
        stale = [key for key, window in self._windows.items() if now - window.start >= self.interval]
        for key in stale or list(self._windows)[: len(self._windows) // 2]:
            del self._windows[key]


class AcceptFailures:
    """An asyncio exception handler that turns ``accept()`` failures into one line an interval.

    When the process is out of descriptors, asyncio reports every failed ``accept()`` with a
    traceback, as many as the listen backlog in one turn of its loop. Those are counted here and
    said once per ``interval``; every other report goes to the loop's default handler.
    """

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self, *, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._count = 0
        self._since = -interval
        self._last_error = ""

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != self.MESSAGE:
            loop.default_exception_handler(context)
            return
        self._count += 1
        error = context.get("exception")
        self._last_error = str(error) if error is not None else "out of resources"
        now = self._clock()
        if now - self._since >= self.interval:
            _logger.error(
                "cannot accept connections (%s): %d failure(s) in the last %g s; new connections wait in the "
                "backlog until descriptors are free",
                self._last_error,
                self._count,
                min(self.interval, now - self._since),
            )
            self._since, self._count = now, 0
