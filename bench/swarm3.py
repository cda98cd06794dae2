"""What a swarm stack costs on three nodes: the gateway reaching a manager over TLS, two workers beside it.

    python bench/swarm3.py [--iterations 30] [--replicas 30] [--json out.json]

Starts a three-node swarm of Docker-in-Docker engines (tests/engines: needs root, builds the engine
image once), loads the busybox test image on every node, and drives it through the gateway's
operations API configured as a gateway is (``DOCKER_HOST``, ``DOCKER_TLS_VERIFY``,
``DOCKER_CERT_PATH``). Two stacks:

- **spread**: three replicas, at most one per node, each logging a line every 0.2 s: ``up --wait``
  (until every task has run 3 s), ``ps``, ``list_stacks`` and ``logs`` (after warm-up calls), one
  rolling ``restart`` and ``down`` (until no task, container or network is left);
- **many**: ``--replicas`` sleeping replicas spread over the three nodes: ``up --wait``, ``ps`` and
  ``down``, to see how the reads grow with the tasks.

The single-node figures come from bench/swarm_ops.py; docs/swarm.md shows both. These nodes are
containers on one machine: no network latency, so the figures are Swarm's scheduling and the
gateway's own cost. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import (  # noqa: E402 - a script beside its helpers, not a package
    Sample,
    ensure_busybox_image,
    interrupt_on_sigterm,
    machine_context,
    markdown_table,
    random_name,
    run_main,
    time_async_calls,
)

from gateway.config import load_settings  # noqa: E402
from gateway.metrics import ControlPlane  # noqa: E402
from gateway.operations import ComposeOperations  # noqa: E402

SPREAD = """
x-compose-agent:
  target: swarm
services:
  web:
    image: {image}
    init: true
    command: ["sh", "-c", "i=0; while true; do i=$$((i+1)); echo tick $$i on $$NODE; sleep 0.2; done"]
    environment:
      NODE: "{{{{.Node.Hostname}}}}"
    deploy:
      replicas: 3
      placement: {{max_replicas_per_node: 1}}
      update_config: {{parallelism: 3, monitor: 1s}}
"""

MANY = """
x-compose-agent:
  target: swarm
services:
  sleeper:
    image: {image}
    init: true
    command: ["sleep", "3600"]
    deploy:
      replicas: {replicas}
      update_config: {{parallelism: 0}}
"""


def write(root: Path, text: str) -> str:
    name = random_name("sw")
    (root / name).mkdir()
    (root / name / "compose.yaml").write_text(text)
    return name


async def measure(args: argparse.Namespace, env: dict[str, str], root: Path, image: str) -> list[Sample]:
    spread = write(root, SPREAD.format(image=image))
    many = write(root, MANY.format(image=image, replicas=args.replicas))
    ops = ComposeOperations.from_settings(
        load_settings(env, stacks_dir=root), plane=ControlPlane.COMPOSE_AGENT, environ=env
    )
    n, w = args.iterations, 3
    try:
        samples = [
            await time_async_calls(
                "swarm3: up --wait (3 replicas, one per node; 3 s settle included)", lambda: ops.up(spread, wait=True)
            ),
            await time_async_calls("swarm3: ps (3 tasks on 3 nodes)", lambda: ops.ps(spread), iterations=n, warmup=w),
            await time_async_calls("swarm3: list_stacks (one stack)", ops.list_stacks, iterations=n, warmup=w),
            await time_async_calls(
                "swarm3: logs tail=200 (3 tasks on 3 nodes)", lambda: ops.logs(spread), iterations=n, warmup=w
            ),
            await time_async_calls(
                "swarm3: restart (rolling, monitor 1 s)", lambda: ops.service_action("restart", spread)
            ),
            await time_async_calls("swarm3: down (until nothing is left)", lambda: ops.down(spread)),
            await time_async_calls(
                f"swarm3: up --wait ({args.replicas} replicas on 3 nodes)", lambda: ops.up(many, wait=True)
            ),
            await time_async_calls(
                f"swarm3: ps ({args.replicas} tasks on 3 nodes)", lambda: ops.ps(many), iterations=n, warmup=w
            ),
            await time_async_calls(f"swarm3: down ({args.replicas} replicas)", lambda: ops.down(many)),
        ]
    finally:
        ops.close()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--replicas", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from tests.engines import ensure_engine_image, start_swarm

    interrupt_on_sigterm()
    image = ensure_busybox_image()
    root = Path(tempfile.mkdtemp(prefix="compose-agent-swarm3-"))
    before = machine_context()
    swarm: Any = None
    try:
        swarm = start_swarm(ensure_engine_image())
        swarm.load_image(image)
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **swarm.docker_env()}
        samples = anyio.run(measure, args, env, root, image)
    finally:
        if swarm is not None:
            swarm.remove()
        shutil.rmtree(root, ignore_errors=True)
    after = machine_context()
    print(f"three nodes (a manager over TLS, two workers); {os.cpu_count()} CPUs\n")
    print(markdown_table(samples))
    print(f"\nmachine before: {before}\nmachine after:  {after}")
    if args.json:
        args.json.write_text(json.dumps({"samples": [s.as_dict() for s in samples], "machine": [before, after]}))
    return 0


if __name__ == "__main__":
    run_main(main)
