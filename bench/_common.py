"""Helpers shared by the benches: the busybox test image, names, ports, timing loops, p50/p95
summaries and their table, and the clean-up path on Ctrl-C or SIGTERM.

Benches are scripts, not tests: they print figures and assert nothing about time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import anyio

__all__ = [
    "BUSYBOX_IMAGE",
    "Sample",
    "ensure_busybox_image",
    "free_port",
    "interrupt_on_sigterm",
    "machine_context",
    "markdown_table",
    "percentile",
    "random_name",
    "run_and_report",
    "run_main",
    "stop_process",
    "wait_for_health",
    "time_async_calls",
    "time_calls",
]

BUSYBOX_IMAGE = "compose-agent-test-busybox:latest"
_BUSYBOX_DOCKERFILE = 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\n'


def random_name(prefix: str = "bench") -> str:
    """A compose-project-safe name that two concurrent runs on one engine won't share."""
    return f"{prefix}{secrets.token_hex(4)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_busybox_image(image: str = BUSYBOX_IMAGE) -> str:
    """Build the FROM-scratch busybox image unless the engine already has it (no registry is needed)."""
    present = subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False)
    if present.returncode == 0:
        return image
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).exists():
        raise SystemExit("busybox is needed to build the bench image: apt-get install busybox-static")
    with tempfile.TemporaryDirectory() as ctx:
        shutil.copy(busybox, Path(ctx) / "busybox")
        (Path(ctx) / "Dockerfile").write_text(_BUSYBOX_DOCKERFILE)
        subprocess.run(["docker", "build", "-q", "-t", image, ctx], check=True, capture_output=True)
    return image


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: the smallest sample with at least ``pct`` % of samples at or below it."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Sample:
    """Timings of one operation, in milliseconds (or any unit, for non-time figures)."""

    name: str
    values: list[float] = field(default_factory=list)
    unit: str = "ms"

    @property
    def p50(self) -> float:
        return percentile(self.values, 50)

    @property
    def p95(self) -> float:
        return percentile(self.values, 95)

    @contextmanager
    def timing(self) -> Iterator[None]:
        """Time the ``with`` block and add its duration in ms; a block that raises adds nothing."""
        started = time.perf_counter()
        yield
        self.values.append((time.perf_counter() - started) * 1000)

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "unit": self.unit,
            "n": len(self.values),
            "p50": round(self.p50, 3),
            "p95": round(self.p95, 3),
            "min": round(min(self.values), 3) if self.values else None,
            "max": round(max(self.values), 3) if self.values else None,
        }


def time_calls(name: str, fn: Callable[[], object], *, iterations: int, warmup: int = 0) -> Sample:
    """Call ``fn`` ``warmup`` times untimed, then ``iterations`` times timed, one after another."""
    for _ in range(warmup):
        fn()
    sample = Sample(name)
    for _ in range(iterations):
        with sample.timing():
            fn()
    return sample


async def time_async_calls(
    name: str, call: Callable[[], Awaitable[object]], *, iterations: int = 1, warmup: int = 0
) -> Sample:
    """:func:`time_calls` for a coroutine function: ``warmup`` awaits untimed, then ``iterations`` timed."""
    for _ in range(warmup):
        await call()
    sample = Sample(name)
    for _ in range(iterations):
        with sample.timing():
            await call()
    return sample


def machine_context() -> dict[str, object]:
    """What else shaped the figures: cores and load (other engineers' tests may share the machine)."""
    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "loadavg_1m_5m_15m": [round(x, 2) for x in load]}


def markdown_table(samples: list[Sample]) -> str:
    """A Markdown table of timings in ms, one row per sample: its name, how many values, p50 and p95."""
    rows = ["| operation | n | p50 ms | p95 ms |", "|---|---|---|---|"]
    rows += [f"| {s.name} | {len(s.values)} | {s.p50:.1f} | {s.p95:.1f} |" for s in samples]
    return "\n".join(rows)


def run_and_report(measure: Callable[[argparse.Namespace], Awaitable[list[Sample]]], args: argparse.Namespace) -> None:
    """Run ``measure(args)``, then print the machine's load before and after and the samples' table.

    With ``args.json`` set, the samples are also written there as a JSON list of :meth:`Sample.as_dict`.
    """
    before = machine_context()
    samples = anyio.run(measure, args)
    print(f"machine: {before} -> {machine_context()}")
    print(markdown_table(samples))
    if args.json:
        args.json.write_text(json.dumps([s.as_dict() for s in samples], indent=2))


def wait_for_health(base: str, process: subprocess.Popen[Any], log: Path, timeout: float = 30) -> None:
    """Wait until ``{base}/health`` answers 200.

    Raises:
        RuntimeError: ``process`` exited first, or ``timeout`` s passed; with the end of its ``log``.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base}/health did not answer within {timeout:g} s:\n{_tail(log)}")
        time.sleep(0.05)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else f"(no {log})"


def stop_process(process: subprocess.Popen[Any], timeout: float = 10) -> None:
    """Terminate ``process`` if it still runs, and kill it if it has not exited within ``timeout`` s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> None:
    """Make SIGTERM take the same clean-up path as Ctrl-C: both raise KeyboardInterrupt."""
    signal.signal(signal.SIGTERM, _interrupt)


def run_main(main: Callable[[], int]) -> NoReturn:
    """Exit with ``main()``'s code; on Ctrl-C (or SIGTERM, see :func:`interrupt_on_sigterm`) with 130.

    ``main`` removes what it made in its own ``finally`` blocks, so an interrupt only needs saying.
    """
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; the stack and servers were removed", file=sys.stderr)
        sys.exit(130)
