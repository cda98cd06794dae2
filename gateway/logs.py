"""Log reading built for an LLM: bounded, newest-first kept, greppable, each line labelled by service."""

from __future__ import annotations

import heapq
import re
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

import regex

from .errors import InvalidInput

__all__ = [
    "MAX_TAIL",
    "DEFAULT_TAIL",
    "MAX_BYTES",
    "SINCE_HELP",
    "parse_since",
    "compile_grep",
    "merge_logs",
    "bound_lines",
]

DEFAULT_TAIL = 200
MAX_TAIL = 10_000
DEFAULT_BYTES = 64 * 1024
MAX_BYTES = 1024 * 1024
MAX_GREP_LENGTH = 512
# A catastrophic pattern must not pin a worker thread; the regex module can give up in time.
GREP_TIMEOUT_S = 2.0

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


def bound_lines(
    merged: list[tuple[str, bytes]],
    *,
    grep: regex.Pattern[str] | None,
    timestamps: bool,
    max_bytes: int,
) -> tuple[list[str], int]:
    """Format, filter and cap lines, keeping the newest. Returns (lines, dropped)."""
    out: list[str] = []
    size = 0
    dropped = 0
    deadline = time.monotonic() + GREP_TIMEOUT_S
    # Walk newest to oldest so the byte cap keeps the most recent lines.
    for label, raw in reversed(merged):
        stamp, _, message_bytes = raw.partition(b" ")
        message = message_bytes.decode("utf-8", "replace").rstrip("\r")
        if grep is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise InvalidInput(f"grep took longer than {GREP_TIMEOUT_S:.0f}s; simplify the pattern")
            try:
                if grep.search(message, timeout=remaining) is None:
                    continue
            except TimeoutError:
                raise InvalidInput(f"grep took longer than {GREP_TIMEOUT_S:.0f}s; simplify the pattern") from None
        line = f"{label} | {stamp.decode()} {message}" if timestamps else f"{label} | {message}"
        size += len(line) + 1
        if size > max_bytes:
            dropped += 1
            continue
        out.append(line)
    out.reverse()
    return out, dropped
