"""Log reading built for an LLM: bounded, newest-first kept, greppable, each line labelled by service."""

from __future__ import annotations

import heapq
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

import regex

from ..errors import InvalidInput
from ..redact import REDACTOR

__all__ = [
    "MAX_TAIL",
    "DEFAULT_TAIL",
    "MAX_BYTES",
    "SINCE_HELP",
    "parse_since",
    "compile_grep",
    "merge_logs",
    "bound_lines",
    "GrepClock",
    "NewestLines",
    "LogCollector",
    "collect_log",
    "merge_newest",
    "demultiplex",
    "Frames",
]

DEFAULT_TAIL = 200
MAX_TAIL = 10_000
DEFAULT_BYTES = 64 * 1024
MAX_BYTES = 1024 * 1024
MAX_GREP_LENGTH = 512
# A catastrophic pattern must not pin a worker thread; the regex module can give up in time.
GREP_TIMEOUT_S = 2.0
# The most of one line held in memory; the engine splits longer lines at 16 KiB anyway.
MAX_HELD_LINE = 64 * 1024

# The one grammar of ``since``, for the MCP tool and the panel alike (matched whole, never searched).
_RELATIVE_RE = re.compile(r"(?:(\d{1,6})d)?(?:(\d{1,7})h)?(?:(\d{1,9})m)?(?:(\d{1,10})s)?")
_UNIX_RE = re.compile(r"\d{1,12}(?:\.\d{1,9})?")
# RFC 3339's shape; what it means is left to datetime.fromisoformat, which takes nanoseconds since 3.11.
_RFC3339_RE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:[Zz]|[+-]\d{2}:\d{2})?")
MAX_SINCE_LENGTH = 64
# Unix seconds may lead the server's clock a little (a client's skew), not by years.
MAX_SINCE_AHEAD_S = 24 * 60 * 60
SINCE_HELP = (
    "give a duration (30s, 10m, 2h, 1d), an RFC 3339 time (2026-11-26T21:00:00Z) "
    "or Unix seconds from 0 to a day from now (1764190800.5)"
)


def validate_tail(tail: int) -> int:
    if not isinstance(tail, int) or isinstance(tail, bool) or not 1 <= tail <= MAX_TAIL:
        raise InvalidInput(
            f"tail must be from 1 to {MAX_TAIL} (a whole number), got {tail!r}; narrow with since or grep"
        )
    return tail


def parse_since(since: str | None, *, now: float | None = None) -> float | None:
    """``since`` as Unix seconds; None (or empty) means no lower bound.

    One grammar for every caller, matched whole (no surrounding spaces):
    a duration back from now (``30s``, ``10m``, ``1h30m``, ``2d``), an RFC 3339 time
    (``2026-01-02T15:04:05.123456789Z``; no zone means UTC), or Unix seconds (``1764190800.5``,
    ``0`` for the epoch) up to a day ahead of ``now``. The epoch is valid and means "from the start".

    Raises:
        InvalidInput: the text is none of these, not a real date, or before 1970.
    """
    if since is None or since == "":
        return None
    shown = since[:MAX_SINCE_LENGTH]
    current = time.time() if now is None else now
    if len(since) > MAX_SINCE_LENGTH:
        raise InvalidInput(f"since {shown!r}... is not understood ({len(since)} characters); {SINCE_HELP}")
    relative = _RELATIVE_RE.fullmatch(since)
    if relative and any(relative.groups()):
        days, hours, minutes, seconds = (int(g) if g else 0 for g in relative.groups())
        stamp = current - (days * 86400 + hours * 3600 + minutes * 60 + seconds)
    elif _UNIX_RE.fullmatch(since):
        stamp = float(since)
        if stamp > current + MAX_SINCE_AHEAD_S:
            raise InvalidInput(f"since {shown!r} is more than a day in the future as Unix seconds; {SINCE_HELP}")
    elif _RFC3339_RE.fullmatch(since):
        try:
            parsed = datetime.fromisoformat(since.upper())
        except ValueError:
            raise InvalidInput(f"since {shown!r} is not a real date and time; {SINCE_HELP}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        stamp = parsed.timestamp()
    else:
        raise InvalidInput(f"since {shown!r} is not understood; {SINCE_HELP}")
    if stamp < 0:
        raise InvalidInput(f"since {shown!r} reaches back before 1970; the engine keeps no older logs")
    return stamp


def compile_grep(pattern: str | None) -> regex.Pattern[str] | None:
    if pattern is None or pattern == "":
        return None
    if len(pattern) > MAX_GREP_LENGTH:
        raise InvalidInput(f"grep pattern is {len(pattern)} characters; at most {MAX_GREP_LENGTH} are allowed")
    try:
        return regex.compile(pattern, regex.V0)
    except regex.error as exc:
        raise InvalidInput(f"grep is not a valid regular expression: {exc}") from None


def _sort_key(line: bytes) -> bytes:
    # RFC 3339 nano timestamps drop trailing zeros, so pad the fraction before comparing as text.
    stamp = line.split(b" ", 1)[0]
    head, dot, frac = stamp.partition(b".")
    if not dot:
        return head.rstrip(b"Z") + b".000000000"
    return head + b"." + frac.rstrip(b"Z").ljust(9, b"0")


def split_log(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def merge_logs(streams: Iterable[tuple[str, list[bytes]]]) -> list[tuple[str, bytes]]:
    """Interleave per-container logs (each already in time order) by timestamp: (label, line)."""
    streams = list(streams)
    if len(streams) == 1:
        label, lines = streams[0]
        return [(label, line) for line in lines]
    iterables = [_keyed(label, lines) for label, lines in streams]
    return [(label, line) for _, label, line in heapq.merge(*iterables)]


def _keyed(label: str, lines: list[bytes]) -> Iterator[tuple[bytes, str, bytes]]:
    # A function of its own binds each stream's label; a generator expression inside the list
    # comprehension would read the comprehension's last label for every line.
    return ((_sort_key(line), label, line) for line in lines)


class GrepClock:
    """The grep time one logs call may spend, shared by the threads that read its containers.

    Only time inside the regex counts, not time waiting for the engine: a slow or large read must
    not use up the pattern's allowance.
    """

    def __init__(self, limit: float = GREP_TIMEOUT_S) -> None:
        self.limit = limit
        self.spent = 0.0
        self._lock = threading.Lock()

    def matches(self, pattern: regex.Pattern[str], text: str) -> bool:
        """Whether ``pattern`` occurs in ``text``.

        Raises:
            InvalidInput: the call's grep allowance is used up (a catastrophic pattern, most likely).
        """
        remaining = self.limit - self.spent
        if remaining <= 0:
            raise InvalidInput(f"grep took longer than {self.limit:.0f}s; simplify the pattern")
        started = time.monotonic()
        try:
            return pattern.search(text, timeout=remaining) is not None
        except TimeoutError:
            raise InvalidInput(f"grep took longer than {self.limit:.0f}s; simplify the pattern") from None
        finally:
            with self._lock:
                self.spent += time.monotonic() - started


class NewestLines:
    """The newest lines that fit ``max_bytes``, in time order: each new line lets the oldest go.

    A line costs its UTF-8 length plus a newline. A line that could never fit on its own is
    skipped (and counted as dropped) instead of pushing everything older out; of the rest, what is
    kept is the unbroken run of the newest that fits, so memory stays within the budget however
    much is fed. Each line is kept with its engine timestamp, for :func:`merge_newest`; so is
    ``horizon``, the newest line let go for room.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.kept: deque[tuple[bytes, str, int]] = deque()  # (timestamp, line, cost)
        self.size = 0
        #: Lines not kept: too long on their own, or let go because newer ones took the room.
        self.dropped = 0
        #: (timestamp, line) of the newest line let go for room, if any.
        self.horizon: tuple[bytes, str] | None = None

    def add(self, stamp: bytes, line: str, cost: int = 0) -> None:
        """Keep ``line`` as the newest; ``cost`` is its size plus a newline, if already known."""
        cost = cost or (len(line) if line.isascii() else len(line.encode())) + 1
        if cost > self.max_bytes:
            self.dropped += 1
            return
        self.kept.append((stamp, line, cost))
        self.size += cost
        while self.size > self.max_bytes:
            gone_stamp, gone_line, gone_cost = self.kept.popleft()
            self.size -= gone_cost
            self.dropped += 1
            self.horizon = (gone_stamp, gone_line)

    def lines(self) -> list[str]:
        return [line for _, line, _ in self.kept]


class LogCollector:
    """Reads one container's log as the engine streams it, holding only what can still be shown.

    ``feed`` takes the answer's bytes in any chunking; lines (``<RFC 3339> <message>``) are
    formatted with ``label``, filtered by ``grep`` and kept in a :class:`NewestLines`. A line cut
    across chunks is held until it ends, but never more than :data:`MAX_HELD_LINE` (or the budget)
    of it: a longer line could never be shown, so only its start is kept, to judge it by grep, and
    it then counts as dropped.
    """

    def __init__(
        self, label: str, *, grep: regex.Pattern[str] | None, timestamps: bool, max_bytes: int, clock: GrepClock
    ) -> None:
        self.label = label
        self.grep = grep
        self.timestamps = timestamps
        self.clock = clock
        self.newest = NewestLines(max_bytes)
        self._hold = max(max_bytes, MAX_HELD_LINE)
        self._partial = bytearray()
        self._overflow = False  # the partial line outgrew what is held of it

    def feed(self, chunk: bytes) -> None:
        pieces = chunk.split(b"\n")
        if len(pieces) > 1:
            if self._partial or self._overflow:
                self._take(pieces[0])
                self._end_partial()
            else:
                self.add_line(pieces[0])
            for raw in pieces[1:-1]:
                self.add_line(raw)
        self._take(pieces[-1])

    def finish(self) -> NewestLines:
        """End of the answer: the last line, if it had no newline, counts too."""
        if self._partial or self._overflow:
            self._end_partial()
        return self.newest

    def _take(self, piece: bytes) -> None:
        room = self._hold - len(self._partial)
        if len(piece) > room:
            piece, self._overflow = piece[: max(room, 0)], True
        self._partial += piece

    def _end_partial(self) -> None:
        raw = bytes(self._partial)
        overflow = self._overflow
        self._partial.clear()
        self._overflow = False
        if overflow:
            if self._shown(raw) is not None:
                self.newest.dropped += 1  # longer than the budget: it could never be shown
        else:
            self.add_line(raw)

    def add_line(self, raw: bytes) -> None:
        """One whole line of the answer, without its newline."""
        shown = self._shown(raw)
        if shown is not None:
            self.newest.add(*shown)

    def _shown(self, raw: bytes) -> tuple[bytes, str] | None:
        """``<RFC 3339> <message>`` as (timestamp, shown line), or None when grep does not match it."""
        stamp, _, message_bytes = raw.partition(b" ")
        message = message_bytes.decode("utf-8", "replace").rstrip("\r")
        if self.grep is not None:
            # Matched as it will be shown: a grep on the raw line would answer, match or not, whether a
            # redacted secret starts with what the caller guessed (gateway.redact).
            message = REDACTOR.redact(message)
            if not self.clock.matches(self.grep, message):
                return None
        if self.timestamps:
            return stamp, f"{self.label} | {stamp.decode('ascii', 'replace')} {message}"
        return stamp, f"{self.label} | {message}"


def collect_log(
    chunks: Iterable[bytes],
    label: str,
    *,
    grep: regex.Pattern[str] | None,
    timestamps: bool,
    max_bytes: int,
    clock: GrepClock,
) -> NewestLines:
    """The newest lines of one container's log that fit ``max_bytes``, read from its streamed answer."""
    collector = LogCollector(label, grep=grep, timestamps=timestamps, max_bytes=max_bytes, clock=clock)
    for chunk in chunks:
        collector.feed(chunk)
    return collector.finish()


def merge_newest(parts: Iterable[NewestLines], *, max_bytes: int) -> tuple[list[str], int]:
    """Interleave each container's newest lines by time and keep the newest that fit. Returns (lines, dropped).

    The same result as merging whole logs first and bounding after, with only each container's own
    run in memory. Whatever fits overall is, for each container, a run of its newest lines that
    fits, so each part holds it. And a line a part let go for room cannot fit overall either (the
    lines newer than it already overflowed within its own container), so nothing older than any
    part's horizon can be shown: the run stops there, even where another part still holds lines.
    """
    parts = list(parts)
    if len(parts) == 1:
        return parts[0].lines(), parts[0].dropped
    horizons = [(_sort_key(stamp), line) for part in parts if part.horizon for stamp, line in [part.horizon]]
    horizon = max(horizons) if horizons else None
    merged = NewestLines(max_bytes)
    entries = heapq.merge(*(((_sort_key(stamp), line, cost) for stamp, line, cost in part.kept) for part in parts))
    for key, line, cost in entries:
        if horizon is not None and (key, line) < horizon:
            merged.dropped += 1
        else:
            merged.add(key, line, cost)
    return merged.lines(), merged.dropped + sum(part.dropped for part in parts)


def bound_lines(
    merged: list[tuple[str, bytes]],
    *,
    grep: regex.Pattern[str] | None,
    timestamps: bool,
    max_bytes: int,
) -> tuple[list[str], int]:
    """Format, filter and cap already merged ``(label, line)`` pairs, keeping the newest. Returns (lines, dropped)."""
    clock = GrepClock()
    newest = NewestLines(max_bytes)
    collectors: dict[str, LogCollector] = {}
    for label, raw in merged:
        collector = collectors.get(label)
        if collector is None:
            collector = collectors[label] = LogCollector(
                label, grep=grep, timestamps=timestamps, max_bytes=max_bytes, clock=clock
            )
            collector.newest = newest  # one budget for all labels: the pairs are merged already
        collector.add_line(raw)
    return newest.lines(), newest.dropped


class Frames:
    """The payload of the engine's stdout/stderr frames (8-byte header: stream, 0, 0, 0, size), or a TTY's
    raw bytes, fed in any chunking: the answer's first byte says which."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self._framed: bool | None = None

    def feed(self, chunk: bytes) -> bytes:
        """The payload completed by ``chunk`` (empty while a frame is still cut)."""
        if self._framed is None:
            if not chunk:
                return b""
            self._framed = chunk[0] in (0, 1, 2)
        if not self._framed:
            return chunk
        pending = self._pending
        pending += chunk
        payloads = []
        at = 0
        while len(pending) - at >= 8:
            end = at + 8 + int.from_bytes(pending[at + 4 : at + 8], "big")
            if end > len(pending):
                break
            payloads.append(bytes(pending[at + 8 : end]))
            at = end
        del pending[:at]
        return b"".join(payloads)


def demultiplex(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """:class:`Frames` over an iterator of chunks: each chunk's completed payload, if any."""
    frames = Frames()
    for chunk in chunks:
        data = frames.feed(chunk)
        if data:
            yield data
