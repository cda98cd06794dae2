"""Keeping the audit's disk for what matters: refusals summarised, a reserve for mutation lines.

A caller with a token can be refused as fast as its rate limit allows (20 a second by default), and
every refusal used to be a line of its own, until the disk was full and every mutation was refused
for want of an intent line. Two things stop that:

- :class:`RefusalDigest`: within one interval, the first refusal of each (caller, tool, reason)
  is written in full, and the repeats are counted; at the end of the interval each count becomes
  one ``summary`` line. An interval has room for a bounded number of distinct keys; refusals past
  it are counted per caller and tool under one key, so varying the reason does not buy more lines.
- :func:`free_bytes`: refusal lines are written only while the disk keeps ``reserve`` bytes free for
  intent and outcome lines, which are written whatever the reserve says, as long as the disk takes them.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RefusalDigest", "Summary", "RefusalKey", "OTHER", "SpaceWatch", "free_bytes", "timestamp"]

logger = logging.getLogger("gateway.audit")

Clock = Callable[[], float]
# (caller, control plane, tool, reason, on_behalf_of, approval): what makes two refusals "the same".
# The approval is the (id, step) a refusal belongs to, if any: its summary stays in that approval's chain.
RefusalKey = tuple[str, str, str, str, str | None, tuple[str, str] | None]
# Refusals past the interval's room for keys, counted per caller and tool under this reason.
OTHER = "(other)"
MIB = 1024 * 1024


def timestamp(now: float) -> str:
    """An audit line's time: UTC, milliseconds, ``Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


@dataclass
class Summary:
    """Refusals of one key that were counted, not written, between ``since`` and ``until`` (wall clock)."""

    key: RefusalKey
    count: int
    since: float
    until: float

    def record(self) -> dict[str, Any]:
        """The ``summary`` line: the key's fields, ``count``, and the interval it covers."""
        caller, plane, tool, reason, person, approval = self.key
        line: dict[str, Any] = {
            "time": timestamp(self.until),
            "phase": "summary",
            "caller": caller,
            "control_plane": plane,
            "tool": tool,
            "outcome": "refused",
            "error": reason,
            "count": self.count,
            "since": timestamp(self.since),
        }
        if person is not None:
            line["on_behalf_of"] = person
        if approval is not None:
            line["approval"], line["approval_step"] = approval
        return line


@dataclass
class _Window:
    started_mono: float
    started_wall: float
    counts: dict[RefusalKey, int] = field(default_factory=dict)


class RefusalDigest:
    """Says which refusals to write in full, and hands out summaries of the rest once an interval ends.

    Not thread-safe on its own: the audit log calls it under its lock.
    """

    def __init__(
        self, *, interval: float = 60.0, max_keys: int = 100, clock: Clock = time.monotonic, wall: Clock = time.time
    ) -> None:
        if interval <= 0 or max_keys < 1:
            raise ValueError("interval must be positive and max_keys at least 1")
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._wall = wall
        self._window = _Window(clock(), wall())

    def admit(self, key: RefusalKey) -> bool:
        """Count a refusal of ``key``; True if it is the first of its key in this interval (write it)."""
        counts = self._window.counts
        if key in counts:
            counts[key] += 1
            return False
        if len(counts) >= self.max_keys:
            overflow: RefusalKey = (key[0], key[1], key[2], OTHER, None, None)
            counts[overflow] = counts.get(overflow, 0) + 1
            return False
        counts[key] = 0  # written in full: only what follows it is counted
        return True

    def withhold(self, key: RefusalKey) -> None:
        """A refusal :meth:`admit` let through could not be written (no room on disk): count it instead."""
        counts = self._window.counts
        counts[key] = counts.get(key, 0) + 1

    def due(self) -> list[Summary]:
        """The summaries of an interval that has ended (and a fresh interval), else nothing."""
        if self._clock() - self._window.started_mono < self.interval:
            return []
        return self.flush()

    def flush(self) -> list[Summary]:
        """The summaries of the interval so far, whatever its age, and a fresh interval."""
        window = self._window
        self._window = _Window(self._clock(), self._wall())
        until = self._wall()
        return [Summary(key, count, window.started_wall, until) for key, count in window.counts.items() if count]


def free_bytes(fd: int) -> int | None:
    """Bytes an unprivileged writer may still use on the file system holding ``fd``; None if unknown."""
    try:
        info = os.fstatvfs(fd)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


class SpaceWatch:
    """The audit disk's free space as last seen, and a WARNING once an ``interval`` while it is under ``reserve``."""

    def __init__(self, path: Path, reserve: int, interval: float) -> None:
        self.path = path
        self.reserve = reserve
        self.interval = interval
        #: Free bytes at the last line written or refused, and whether that is under the reserve.
        self.free: int | None = None
        self.low = False
        self._warned_at = -math.inf

    def note(self, free: int | None) -> None:
        self.free = free
        was_low, self.low = self.low, free is not None and free < self.reserve
        if not self.low:
            if was_low:
                logger.info(
                    "the audit log's disk has room again (%.1f MiB free); refusals are written again", _mib(free)
                )
            return
        now = time.monotonic()
        if now - self._warned_at >= self.interval:
            self._warned_at = now
            logger.warning(
                "the audit log's disk is low: %.1f MiB free, under the %.1f MiB kept for intent and outcome lines; "
                "refusals are counted, not written, and mutations stop when it is full: free space where %s is",
                _mib(free),
                _mib(self.reserve),
                self.path,
            )


def _mib(size: int | None) -> float:
    return (size or 0) / MIB
