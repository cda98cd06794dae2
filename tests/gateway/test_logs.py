"""Log helpers that need no engine: since parsing, ordering, and the byte cap."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidInput
from gateway.logs import bound_lines, compile_grep, merge_logs, parse_since

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", NOW - 30), ("10m", NOW - 600), ("1h30m", NOW - 5400), ("2d", NOW - 172800), ("", None), (None, None)],
)
def test_relative_since_counts_back_from_now(text: str | None, expected: float | None) -> None:
    assert parse_since(text, now=NOW) == expected


def test_rfc3339_since_with_and_without_a_zone() -> None:
    assert parse_since("2026-01-01T00:00:00Z") == 1767225600.0
    assert parse_since("2026-01-01T01:00:00+01:00") == 1767225600.0
    assert parse_since("2026-01-01T00:00:00") == 1767225600.0  # no zone: UTC


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("yesterday", "is not RFC 3339"),
        ("9" * 400 + "d", "characters long"),
        ("99999999999999999d", "is not RFC 3339"),
        ("0001-01-01T00:00:00Z", "before 1970"),
        ("999999d", "before 1970"),
    ],
)
def test_a_bad_since_is_refused_with_what_to_send(text: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        parse_since(text, now=NOW)


def test_merging_orders_by_time_even_when_fractions_differ_in_length() -> None:
    a = ("a", [b"2026-01-01T00:00:00.5Z one", b"2026-01-01T00:00:02Z three"])
    b = ("b", [b"2026-01-01T00:00:00.123456789Z zero", b"2026-01-01T00:00:01.9Z two"])
    assert [line.split(b" ")[1] for _, line in merge_logs([a, b])] == [b"zero", b"one", b"two", b"three"]


def test_merging_keeps_each_line_labelled_with_its_own_stream() -> None:
    a = ("web", [b"2026-01-01T00:00:01Z one"])
    b = ("worker", [b"2026-01-01T00:00:02Z two"])
    assert [label for label, _ in merge_logs([a, b])] == ["web", "worker"]


def test_the_byte_cap_keeps_the_newest_matching_lines() -> None:
    merged = [("web", f"2026-01-01T00:00:{i:02d}Z line {i}".encode()) for i in range(50)]
    lines, dropped = bound_lines(merged, grep=compile_grep(r"line \d*[05]$"), timestamps=False, max_bytes=60)
    # Each kept line costs its length plus a newline: four of 14 bytes fit in 60.
    assert lines == ["web | line 30", "web | line 35", "web | line 40", "web | line 45"]
    assert dropped == 6  # 0, 5, ..., 25 did not fit
    assert len("\n".join(lines).encode()) <= 60


def test_a_catastrophic_pattern_is_stopped_rather_than_pinning_a_thread() -> None:
    # Exponential backtracking, even for the regex module (which defuses the classic (a+)+).
    merged = [("web", b"2026-01-01T00:00:00Z " + b"a" * 40 + b"!")]
    with pytest.raises(InvalidInput, match="simplify the pattern"):
        bound_lines(merged, grep=compile_grep(r"^(a|aa|aaa)+$"), timestamps=False, max_bytes=1 << 20)
