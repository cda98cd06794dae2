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
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402 - a script beside its helpers, not a package
    Sample,
    ensure_busybox_image,
    random_name,
    run_and_report,
    time_async_calls,
)

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
            n = args.iterations
            samples.append(
                await time_async_calls("plan, the stack as it is", lambda: ops.planner.plan(project), iterations=n)
            )
            samples.append(
                await time_async_calls(
                    "plan, a changed compose file", lambda: ops.planner.plan(project, second), iterations=n
                )
            )
            samples.append(
                await time_async_calls(
                    "deploy, the same file (no-op up)", lambda: ops.deployer.deploy(project, first), iterations=3
                )
            )
            changed, back = Sample("deploy, one service changed (recreates it)"), Sample("rollback (recreates it)")
            for _ in range(args.iterations):
                with changed.timing():
                    await ops.deployer.deploy(project, second)
                with back.timing():
                    await ops.deployer.rollback(project)
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

            samples.append(await time_async_calls("bare compose up -d, nothing to do", bare_up, iterations=n))
            samples.append(await time_async_calls("bare compose config --format json", bare_config, iterations=n))
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
    run_and_report(main, parser.parse_args())
