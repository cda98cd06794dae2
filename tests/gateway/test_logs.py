"""Log reading: the one ``since`` grammar, ordering, labels and the byte cap; then the same against a real engine."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest

from gateway.errors import InvalidInput
from gateway.logs import bound_lines, compile_grep, merge_logs, parse_since
from gateway.operations import ComposeOperations
from tests.conftest import StackFactory

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
    assert parse_since("2026-01-01t00:00:00z") == 1767225600.0  # RFC 3339 allows lower case


def test_rfc3339_since_keeps_the_engines_nanoseconds_to_the_microsecond() -> None:
    assert parse_since("2026-01-01T00:00:00.123456789Z") == pytest.approx(1767225600.123456, abs=1e-6)
    assert parse_since("2026-01-01T00:00:00.5+00:00") == 1767225600.5


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", 0.0), ("1764190800", 1764190800.0), ("1764190800.5", 1764190800.5), (str(int(NOW) + 86_000), NOW + 86_000)],
)
def test_unix_seconds_are_a_since_too(text: str, expected: float) -> None:
    assert parse_since(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["1970-01-01T00:00:00Z", "0", "0.0", "1970-01-01T01:00:00+01:00"])
def test_the_epoch_is_a_valid_since(text: str) -> None:
    assert parse_since(text, now=NOW) == 0.0


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("yesterday", "is not understood"),
        ("9" * 400 + "d", r"is not understood \(401 characters\)"),
        ("99999999999999999d", "is not understood"),
        ("10m\n", "is not understood"),
        (" 10m", "is not understood"),
        ("10m;rm", "is not understood"),
        ("2026-01-02", "is not understood"),
        ("2026-13-45T99:99:99Z", "not a real date"),
        ("0001-01-01T00:00:00Z", "before 1970"),
        ("1969-12-31T23:59:59Z", "before 1970"),
        ("999999d", "before 1970"),
        (str(int(NOW) + 86_401), "more than a day in the future"),
        ("999999999999.999", "more than a day in the future"),
    ],
)
def test_a_bad_since_is_refused_with_what_to_send(text: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=says) as refused:
        parse_since(text, now=NOW)
    assert "RFC 3339" in str(refused.value) or "1970" in str(refused.value)


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


# --- against a real engine ------------------------------------------------------------------------

TWO_TALKERS = """
services:
  alpha:
    image: {image}
    init: true
    command: ["sh", "-c", "for i in $$(seq 1 40); do echo marker-alpha $$i; sleep 0.01; done; sleep 3600"]
  beta:
    image: {image}
    init: true
    command: ["sh", "-c", "for i in $$(seq 1 40); do echo marker-beta $$i; sleep 0.01; done; sleep 3600"]
"""


async def poll(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.1)


@pytest.mark.anyio
@pytest.mark.docker
async def test_each_line_of_two_services_carries_the_label_of_the_service_that_printed_it(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    name = stacks.make(TWO_TALKERS)
    await ops.up(name)

    async def both_done() -> bool:
        text = (await ops.logs(name, tail=100)).text
        return "marker-alpha 40" in text and "marker-beta 40" in text

    await poll(both_done)
    lines = (await ops.logs(name, tail=100)).text.splitlines()
    assert len(lines) == 80
    for line in lines:
        label, _, message = line.partition(" | ")
        assert message.startswith(f"marker-{label} "), line
    # Interleaved in time, not one service after the other: the merge really had two streams to order.
    labels = [line.split(" | ")[0] for line in lines]
    assert sum(a != b for a, b in zip(labels, labels[1:], strict=False)) > 2


@pytest.mark.anyio
@pytest.mark.docker
async def test_the_epoch_as_since_reads_every_line(ops: ComposeOperations, stacks: StackFactory) -> None:
    name = stacks.make(TWO_TALKERS)
    await ops.up(name, services=["alpha"])

    async def done() -> bool:
        return "marker-alpha 40" in (await ops.logs(name, tail=100)).text

    await poll(done)
    for since in ("1970-01-01T00:00:00Z", "0"):
        logs = await ops.logs(name, tail=100, since=since)
        assert logs.lines == 40 and logs.text.splitlines()[0] == "alpha | marker-alpha 1"
