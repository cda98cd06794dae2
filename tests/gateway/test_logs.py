"""Log reading: the one ``since`` grammar, ordering, labels and the byte cap; then the same against a real engine."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Iterator

import pytest

from gateway.engine.logs import (
    MAX_HELD_LINE,
    GrepClock,
    bound_lines,
    collect_log,
    compile_grep,
    demultiplex,
    merge_logs,
    merge_newest,
    parse_since,
)
from gateway.errors import InvalidInput
from gateway.operations import ComposeOperations
from tests.conftest import StackFactory
from tests.polling import eventually

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


# --- bounded reading: only what can still be shown is held ------------------------------------


def _stamp(i: int) -> bytes:
    return f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}.{i:09d}Z".encode()


def _answer(lines: int, width: int, chunk: int = 16 * 1024) -> Iterator[bytes]:
    """A container's answer of ``lines`` timestamped lines, ``width`` bytes of message each, in chunks."""
    pending = bytearray()
    for i in range(lines):
        pending += _stamp(i) + b" " + str(i).encode().rjust(width, b".") + b"\n"
        while len(pending) >= chunk:
            yield bytes(pending[:chunk])
            del pending[:chunk]
    yield bytes(pending)


def test_a_huge_answer_with_a_small_budget_is_never_held_whole() -> None:
    tracemalloc.start()
    try:
        newest = collect_log(
            _answer(20_000, 1000), "big", grep=None, timestamps=False, max_bytes=4096, clock=GrepClock()
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # About 20 MB went through; what was held at any moment is the budget and a chunk or two.
    assert peak < 1_000_000, peak
    # Each line costs 1,007 bytes: the newest four fit in 4,096.
    assert newest.lines() == [f"big | {str(i).rjust(1000, '.')}" for i in range(19_996, 20_000)]
    assert newest.dropped == 19_996 and newest.size <= 4096


def test_a_line_too_long_to_show_is_skipped_and_not_held_whole() -> None:
    huge = _stamp(1) + b" " + b"y" * (32 * MAX_HELD_LINE)
    chunks = [_stamp(0) + b" older\n", *(huge[i : i + 4096] for i in range(0, len(huge), 4096)), b"\n"]
    chunks.append(_stamp(2) + b" newer")  # and a last line without a newline
    tracemalloc.start()
    try:
        newest = collect_log(iter(chunks), "web", grep=None, timestamps=False, max_bytes=2048, clock=GrepClock())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert newest.lines() == ["web | older", "web | newer"] and newest.dropped == 1
    assert peak < 8 * MAX_HELD_LINE, peak  # a few copies of what is held of it, not the 2 MiB line


def test_how_the_answer_is_chunked_changes_nothing() -> None:
    whole = b"".join(_answer(300, 40))
    for size in (1, 7, 4096, len(whole)):
        chunks = (whole[i : i + size] for i in range(0, len(whole), size))
        newest = collect_log(
            chunks, "w", grep=compile_grep("[05]$"), timestamps=True, max_bytes=2048, clock=GrepClock()
        )
        assert newest.lines()[-1].endswith("295") and newest.size <= 2048


def test_bounding_each_container_first_gives_what_bounding_the_merge_gives() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        streams = []
        for label in ("a", "b", "c"):
            stamps = sorted(rng.sample(range(1000), rng.randint(0, 30)))
            streams.append((label, [_stamp(i) + b" " + b"m" * rng.choice([1, 5, 40, 300]) for i in stamps]))
        budget = rng.choice([64, 200, 1024])
        grep = compile_grep(rng.choice(["", "mmmm"]))
        expected = bound_lines(merge_logs(streams), grep=grep, timestamps=False, max_bytes=budget)
        clock = GrepClock()
        parts = [
            collect_log(iter([b"\n".join(lines)]), label, grep=grep, timestamps=False, max_bytes=budget, clock=clock)
            for label, lines in streams
        ]
        assert merge_newest(parts, max_bytes=budget) == expected


def test_the_engines_frames_are_unwrapped_however_they_are_cut() -> None:
    frames = b"".join(
        bytes([1 + i % 2, 0, 0, 0]) + len(p).to_bytes(4, "big") + p for i, p in enumerate([b"ab\n", b"", b"c" * 300])
    )
    for size in (1, 5, 8, 9, len(frames)):
        assert b"".join(demultiplex(iter([frames[i : i + size] for i in range(0, len(frames), size)]))) == (
            b"ab\n" + b"c" * 300
        )
    raw = [b"2026-01-01T00:00:00Z tty line\n", b"2026-01-01T00:00:01Z more\n"]
    assert list(demultiplex(iter(raw))) == raw  # a TTY's answer is not framed


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


async def up_until_logged(
    ops: ComposeOperations,
    stacks: StackFactory,
    compose: str,
    *markers: str,
    up: list[str] | None = None,
    read: list[str] | None = None,
    tail: int = 100,
    timeout: float = 30.0,
) -> str:
    """Bring up a new stack of ``compose`` (only the ``up`` services, if named) and return its name once
    the last ``tail`` lines of its logs (of the ``read`` services, if named) hold every marker."""
    name = stacks.make(compose)
    await ops.up(name, services=up)

    async def logged() -> bool:
        text = (await ops.logs(name, services=read, tail=tail)).text
        return all(marker in text for marker in markers)

    await eventually(logged, timeout=timeout, interval=0.1, what=f"the logs of {name} hold {markers}")
    return name


@pytest.mark.anyio
@pytest.mark.docker
async def test_each_line_of_two_services_carries_the_label_of_the_service_that_printed_it(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    name = await up_until_logged(ops, stacks, TWO_TALKERS, "marker-alpha 40", "marker-beta 40")
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
    name = await up_until_logged(ops, stacks, TWO_TALKERS, "marker-alpha 40", up=["alpha"])
    for since in ("1970-01-01T00:00:00Z", "0"):
        logs = await ops.logs(name, tail=100, since=since)
        assert logs.lines == 40 and logs.text.splitlines()[0] == "alpha | marker-alpha 1"


FLOOD = """
services:
  flood:
    image: {image}
    init: true
    command:
      - sh
      - -c
      - >-
        yes "$$(head -c 2000 /dev/zero | tr '\\0' x)" | head -n 9999; echo flood-done; exec sleep 3600
  tty:
    image: {image}
    init: true
    tty: true
    command: ["sh", "-c", "echo from-a-tty; exec sleep 3600"]
"""


@pytest.mark.anyio
@pytest.mark.docker
async def test_a_20_mb_log_read_with_a_1_kb_budget_holds_a_small_part_of_it(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    name = await up_until_logged(ops, stacks, FLOOD, "flood-done", read=["flood"], tail=1, timeout=120)
    tracemalloc.start()
    try:
        logs = await ops.logs(name, services=["flood"], tail=10_000, max_bytes=1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The engine's answer is 20 MB; the whole of it was never in memory at once.
    assert peak < 4_000_000, peak
    assert logs.text == "flood | flood-done" and logs.truncated and logs.dropped_lines == 9_999
    # A TTY's answer comes unframed, and reads the same way.
    assert (await ops.logs(name, services=["tty"])).text == "tty | from-a-tty"
