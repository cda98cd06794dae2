"""Helpers shared by the benches: the busybox test image, names, ports, and p50/p95 summaries.

Benches are scripts, not tests: they print figures and assert nothing about time.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BUSYBOX_IMAGE",
    "Sample",
    "ensure_busybox_image",
    "free_port",
    "machine_context",
    "percentile",
    "random_name",
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


def time_calls(name: str, fn: Callable[[], object], *, iterations: int, warmup: int) -> Sample:
    """Call ``fn`` ``warmup`` times untimed, then ``iterations`` times timed, one after another."""
    for _ in range(warmup):
        fn()
    sample = Sample(name)
    for _ in range(iterations):
        started = time.perf_counter()
        fn()
        sample.values.append((time.perf_counter() - started) * 1000)
    return sample


def machine_context() -> dict[str, object]:
    """What else shaped the figures: cores and load (other engineers' tests may share the machine)."""
    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "loadavg_1m_5m_15m": [round(x, 2) for x in load]}
