"""What deploy, plan and rollback cost, beside the bare Compose commands they are built on.

    python bench/deploy.py [--iterations 10] [--json out.json]

It deploys a two-service busybox stack (random project name) into a temporary stacks dir through
the operations API, then times:

- ``plan`` of the stack as it is, and of a changed compose file (scratch folder, guard, config
  hashes and Compose's dry run);
- ``deploy`` of the same file again (validation, guard, version, write, a no-op ``up``);
- ``deploy`` alternating one service's command (recreates that service: the engine's share
  dominates) and ``rollback`` after each;
- for comparison, a bare ``docker compose up -d`` with nothing to do, and a bare
  ``docker compose config --format json``.

Then removes the project (``down -v``) and the temporary dir, also on a failure. Prints a Markdown
table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Sample, ensure_busybox_image, machine_context, random_name  # noqa: E402 - beside its helpers

from gateway.config import load_settings  # noqa: E402
from gateway.metrics import ControlPlane  # noqa: E402
from gateway.operations import ComposeOperations  # noqa: E402

STACK = """
services:
  web:
    image: {image}
    init: true
    command: ["sleep", "3600"]
  worker:
    image: {image}
    init: true
    command: ["sleep", "{sleep}"]
"""


async def timed(name: str, fn: Callable[[], Awaitable[object]], iterations: int) -> Sample:
    sample = Sample(name)
    for _ in range(iterations):
        started = time.perf_counter()
        await fn()
        sample.values.append((time.perf_counter() - started) * 1000)
    return sample


async def main(args: argparse.Namespace) -> list[Sample]:
    image = ensure_busybox_image()
    samples: list[Sample] = []
    project = random_name("deploy")
    first = STACK.format(image=image, sleep=3601)
    second = STACK.format(image=image, sleep=3602)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "stacks"
        root.mkdir()
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")}
        ops = ComposeOperations.from_settings(
            load_settings(env, stacks_dir=root), plane=ControlPlane.COMPOSE_AGENT, environ=os.environ
        )
        try:
            await ops.deployer.deploy(project, first)
            samples.append(await timed("plan, the stack as it is", lambda: ops.planner.plan(project), args.iterations))
            samples.append(
                await timed("plan, a changed compose file", lambda: ops.planner.plan(project, second), args.iterations)
            )
            samples.append(
                await timed("deploy, the same file (no-op up)", lambda: ops.deployer.deploy(project, first), 3)
            )
            changed, back = Sample("deploy, one service changed (recreates it)"), Sample("rollback (recreates it)")
            for _ in range(args.iterations):
                started = time.perf_counter()
                await ops.deployer.deploy(project, second)
                changed.values.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                await ops.deployer.rollback(project)
                back.values.append((time.perf_counter() - started) * 1000)
            samples += [changed, back]
            folder = root / project
            compose = ["docker", "compose", "-p", project, "-f", str(folder / "compose.yaml")]

            async def bare_up() -> None:
                await anyio.to_thread.run_sync(
                    lambda: subprocess.run([*compose, "up", "-d"], cwd=folder, capture_output=True, check=True)
                )

            async def bare_config() -> None:
                await anyio.to_thread.run_sync(
                    lambda: subprocess.run(
                        [*compose, "config", "--format", "json"], cwd=folder, capture_output=True, check=True
                    )
                )

            samples.append(await timed("bare compose up -d, nothing to do", bare_up, args.iterations))
            samples.append(await timed("bare compose config --format json", bare_config, args.iterations))
        finally:
            subprocess.run(
                ["docker", "compose", "-p", project, "down", "-v", "-t", "1"], capture_output=True, check=False
            )
            ops.close()
    return samples


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()
    before = machine_context()
    results = anyio.run(main, arguments)
    print(f"machine: {before} -> {machine_context()}")
    print("| operation | p50 ms | p95 ms |\n|---|---|---|")
    for sample in results:
        print(f"| {sample.name} | {sample.p50:.1f} | {sample.p95:.1f} |")
    if arguments.json:
        arguments.json.write_text(json.dumps([s.as_dict() for s in results], indent=2))
