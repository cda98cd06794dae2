"""What the Engine API reads behind ``ps`` cost: API version negotiation, and how start times are found.

    python bench/engine_reads.py [--iterations 300] [--connections 30] [--services 10] [--json out.json]

Two questions, answered on a stack of ``--services`` running busybox services (random project name,
temporary folder, brought up with ``docker compose`` and removed afterwards, also on Ctrl-C):

1. Does negotiating the API version cost anything per call? It compares, alternating call by call,
   the list of the project's containers through a docker-py client pinned to 1.41 (what the gateway
   did before) and through the gateway's :class:`~gateway.engine.client.Engine`, which negotiates once per
   connection. It also times a fresh connection's first call, which is where the one
   ``GET /version`` goes, against a pinned client's first call.
2. Does reading the start time from the list's "Up 5 minutes" text (and inspecting only when the
   cached start time no longer fits it) matter? It compares the ``ps`` rows built that way with the
   same rows built by inspecting every running container on every call.

Nothing here asserts on time: a bench reports, and the reader judges (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import (  # noqa: E402 - a script beside its helpers, not a package
    Sample,
    ensure_busybox_image,
    interrupt_on_sigterm,
    machine_context,
    random_name,
)

from gateway.engine.client import Engine  # noqa: E402
from gateway.engine.containers import container_to_status  # noqa: E402


def compose_yaml(image: str, services: int) -> str:
    lines = ["services:"]
    for n in range(services):
        lines += [f"  svc{n}:", f"    image: {image}", "    init: true", '    command: ["sleep", "3600"]']
    return "\n".join(lines) + "\n"


def alternate(calls: dict[str, Any], iterations: int, warmup: int = 20) -> dict[str, Sample]:
    """Time each call once per round, round after round, so that load changes hit them all alike."""
    samples = {name: Sample(name) for name in calls}
    for round_ in range(warmup + iterations):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            if round_ >= warmup:
                samples[name].values.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--connections", type=int, default=30, help="fresh connections timed for question 1")
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    project = random_name("bench")
    root = Path(tempfile.mkdtemp(prefix="compose-agent-bench-"))
    compose_file = root / "compose.yaml"
    compose_file.write_text(compose_yaml(ensure_busybox_image(), args.services))
    compose = ["docker", "compose", "-p", project, "-f", str(compose_file)]

    interrupt_on_sigterm()
    before = machine_context()
    pinned = docker.APIClient(version="1.41")
    engine = Engine()
    label = {"label": f"com.docker.compose.project={project}"}
    try:
        subprocess.run([*compose, "up", "-d"], check=True, capture_output=True)

        def pinned_list() -> object:
            return pinned.containers(all=True, filters=label)

        def negotiated_list() -> object:
            return engine.project_containers(project)

        def rows_from_status_text() -> object:
            return [
                container_to_status(c, engine.started_at(c) if c.get("State") == "running" else None)
                for c in engine.project_containers(project)
            ]

        def rows_from_inspects() -> object:
            rows = []
            for c in engine.project_containers(project):
                started = engine.inspect(c["Id"])["State"]["StartedAt"] if c.get("State") == "running" else None
                rows.append(container_to_status(c, started))
            return rows

        samples = alternate(
            {
                "list, client pinned to 1.41 (before)": pinned_list,
                "list, negotiated Engine (now)": negotiated_list,
                "ps rows, start times from the status text (now)": rows_from_status_text,
                f"ps rows, one inspect per running container ({args.services})": rows_from_inspects,
            },
            args.iterations,
        )

        def first_call_pinned() -> None:
            client = docker.APIClient(version="1.41")
            try:
                client.containers(all=True, filters=label)
            finally:
                client.close()

        def first_call_negotiated() -> None:
            fresh = Engine()
            try:
                fresh.project_containers(project)
            finally:
                fresh.close()

        firsts = alternate(
            {
                "fresh connection's first list, pinned": first_call_pinned,
                "fresh connection's first list, negotiated (+ GET /version)": first_call_negotiated,
            },
            args.connections,
            warmup=3,
        )
    finally:
        pinned.close()
        engine.close()
        subprocess.run([*compose, "down", "-v", "--timeout", "1"], capture_output=True, check=False)
        compose_file.unlink(missing_ok=True)
        root.rmdir()
    after = machine_context()

    every = {**samples, **firsts}
    print(f"Engine API version: {Engine().api_version} (negotiated), {args.services} running services\n")
    print("| what | p50 | p95 |")
    print("| --- | ---: | ---: |")
    for sample in every.values():
        print(f"| {sample.name} | {sample.p50:.2f} ms | {sample.p95:.2f} ms |")
    print(f"\nmachine before: {before}\nmachine after:  {after}")
    if args.json:
        args.json.write_text(json.dumps({"samples": [s.as_dict() for s in every.values()], "machine": [before, after]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
