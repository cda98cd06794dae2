"""Log reading built for an LLM: bounded, newest-first kept, greppable, each line labelled by service."""

from __future__ import annotations

import heapq
import re
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

import regex

from .errors import InvalidInput

__all__ = ["MAX_TAIL", "DEFAULT_TAIL", "MAX_BYTES", "parse_since", "compile_grep", "merge_logs", "bound_lines"]

DEFAULT_TAIL = 200
MAX_TAIL = 10_000
DEFAULT_BYTES = 64 * 1024
MAX_BYTES = 1024 * 1024
MAX_GREP_LENGTH = 512
# A catastrophic pattern must not pin a worker thread; the regex module can give up in time.
GREP_TIMEOUT_S = 2.0

_RELATIVE_RE = re.compile(r"(?:(\d{1,6})d)?(?:(\d{1,7})h)?(?:(\d{1,9})m)?(?:(\d{1,10})s)?")
_SINCE_HELP = "RFC 3339 (2026-01-02T15:04:05Z) or relative (30s, 10m, 2h, 1d)"


def validate_tail(tail: int) -> int:
    if not isinstance(tail, int) or isinstance(tail, bool) or not 1 <= tail <= MAX_TAIL:
        raise InvalidInput(
            f"tail must be from 1 to {MAX_TAIL} (a whole number), got {tail!r}; narrow with since or grep"
        )
    return tail


def parse_since(since: str | None, *, now: float | None = None) -> float | None:
    """``since`` as a Unix time: RFC 3339 (``2026-01-02T15:04:05Z``) or relative (``10m``, ``1h30m``, ``2d``)."""
    if since is None or since == "":
        return None
    text = since.strip()
    if len(text) > 64:
        raise InvalidInput(f"since is {len(text)} characters long; give {_SINCE_HELP}")
    current = time.time() if now is None else now
    match = _RELATIVE_RE.fullmatch(text)
    if match and any(match.groups()):
        days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
        stamp = current - (days * 86400 + hours * 3600 + minutes * 60 + seconds)
    else:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidInput(f"since={since[:60]!r} is not {_SINCE_HELP}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        stamp = parsed.timestamp()
    if stamp < 0:
        raise InvalidInput(f"since={since[:60]!r} reaches back before 1970; the engine keeps no older logs")
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
