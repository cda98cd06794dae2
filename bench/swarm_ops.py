"""What a swarm stack costs through the gateway, beside the same calls on a Compose stack.

    python bench/swarm_ops.py [--iterations 30] [--json out.json]

It holds the engine's swarm as the tests do (``docker swarm init --advertise-addr 127.0.0.1`` when
the engine is in none, left afterwards only if this run made it), writes a two-replica swarm stack
and a two-service Compose stack into a temporary stacks dir, and times through the operations API:
``up --wait`` once each, then ``ps``, ``list_stacks`` and ``logs`` (after warm-up calls), then one
rolling ``restart``, ``stop``, ``start`` and ``down`` of the swarm stack and a ``down`` of the
Compose one. Prints a Markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import anyio
import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import (  # noqa: E402 - a script beside its helpers, not a package
    Sample,
    ensure_busybox_image,
    machine_context,
    markdown_table,
    random_name,
    time_async_calls,
)

from gateway.config import load_settings  # noqa: E402
from gateway.metrics import ControlPlane  # noqa: E402
from gateway.operations import ComposeOperations  # noqa: E402
from tests.conftest import STACK_FILES, WEB_WORKER  # noqa: E402
from tests.gateway.swarm_fixtures import TWO_REPLICAS, held_swarm, remove_stack  # noqa: E402


def write(root: Path, text: str, image: str, files: dict[str, str] | None = None) -> str:
    name = random_name()
    (root / name).mkdir()
    (root / name / "compose.yaml").write_text(text.replace("{image}", image))
    for rel, content in (files or {}).items():
        (root / name / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / name / rel).write_text(content)
    return name


async def run(iterations: int) -> list[Sample]:
    image = ensure_busybox_image()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        on_swarm, on_compose = write(root, TWO_REPLICAS, image), write(root, WEB_WORKER, image, STACK_FILES)
        environ = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
        ops = ComposeOperations.from_settings(
            load_settings(environ, stacks_dir=root), plane=ControlPlane.COMPOSE_AGENT, environ=dict(os.environ)
        )
        try:
            n, w = iterations, 3
            return [
                await time_async_calls(
                    "swarm: up --wait (2 replicas, 3 s settle included)", lambda: ops.up(on_swarm, wait=True)
                ),
                await time_async_calls("compose: up --wait (2 services)", lambda: ops.up(on_compose, wait=True)),
                await time_async_calls("swarm: ps (2 tasks)", lambda: ops.ps(on_swarm), iterations=n, warmup=w),
                await time_async_calls(
                    "compose: ps (2 containers)", lambda: ops.ps(on_compose), iterations=n, warmup=w
                ),
                await time_async_calls("list_stacks (one of each)", ops.list_stacks, iterations=n, warmup=w),
                await time_async_calls("swarm: logs tail=200", lambda: ops.logs(on_swarm), iterations=n, warmup=w),
                await time_async_calls("compose: logs tail=200", lambda: ops.logs(on_compose), iterations=n, warmup=w),
                await time_async_calls(
                    "swarm: restart (rolling, monitor 1 s)", lambda: ops.service_action("restart", on_swarm)
                ),
                await time_async_calls("swarm: stop (scale to 0)", lambda: ops.service_action("stop", on_swarm)),
                await time_async_calls("swarm: start (scale back)", lambda: ops.service_action("start", on_swarm)),
                await time_async_calls("swarm: down (until tasks are gone)", lambda: ops.down(on_swarm)),
                await time_async_calls("compose: down", lambda: ops.down(on_compose, volumes=True)),
            ]
        finally:
            ops.close()
            remove_stack(on_swarm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    client = docker.from_env()
    try:
        with held_swarm(client):
            samples = anyio.run(run, args.iterations)
    finally:
        client.close()
    print(markdown_table(samples))
    print(f"\n{machine_context()}")
    if args.json:
        args.json.write_text(json.dumps({"samples": [s.as_dict() for s in samples], **machine_context()}, indent=2))


if __name__ == "__main__":
    main()
