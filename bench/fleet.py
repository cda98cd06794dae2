"""What a fleet costs: ``ps`` on a local, a TLS and an SSH engine, and ``list_stacks`` across the three.

    python bench/fleet.py [--iterations 200] [--services 10] [--json out.json]

Starts a TLS and an SSH engine (Docker-in-Docker containers, tests/engines: needs root and builds
the engine image once), brings the same stack of ``--services`` sleeping busybox services up on
each and on the local engine, and times, call by call in turn:

- ``ps`` of the stack through the gateway's operations, one per engine, each configured as a
  gateway is (``DOCKER_HOST``, ``DOCKER_TLS_VERIFY``, ``DOCKER_CERT_PATH``): the Engine API list and
  the rows, over the Unix socket, over TLS, and over a kept ``docker system dial-stdio`` session;
- ``list_stacks`` of the local engine alone, and of the three engines at once (what a fleet's
  listing does: each host's listing side by side);
- the ``list_stacks`` tool through an MCP client (in memory), of a gateway of the local engine and
  of a gateway whose ``config.json`` adds the TLS and the SSH engine as hosts (issue 25's fleet);
- the same through the docker CLI: ``docker compose ps --format json`` and ``docker compose ls``
  against each engine, the three ``ls`` one after another (as a script would) and side by side.

The issue's bar: ``ps`` on a remote engine at most 2 ms more than a local one, ``list_stacks``
across three engines at most twice a local one. These engines are containers on this machine: the
network adds nothing here, so the figures are the transports' own cost; a real network adds its
round trip to each remote call. Nothing here asserts on time (see docs/fleet.md for the figures).
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
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import (  # noqa: E402 - a script beside its helpers, not a package
    Sample,
    ensure_busybox_image,
    interrupt_on_sigterm,
    machine_context,
    random_name,
    run_main,
)
from mcp import Client  # noqa: E402

from gateway.config import load_settings  # noqa: E402
from gateway.fleet import Fleet  # noqa: E402
from gateway.mcp.server import build_server  # noqa: E402
from gateway.metrics import ControlPlane  # noqa: E402
from gateway.operations import ComposeOperations  # noqa: E402

Call = Callable[[], Awaitable[object]]


def compose_yaml(image: str, services: int) -> str:
    lines = ["services:"]
    for n in range(services):
        lines += [f"  svc{n}:", f"    image: {image}", "    init: true", '    command: ["sleep", "3600"]']
    return "\n".join(lines) + "\n"


async def alternate(calls: dict[str, Call], iterations: int, warmup: int = 10) -> list[Sample]:
    """Time each call once per round, round after round, so that load changes hit them all alike."""
    samples = {name: Sample(name) for name in calls}
    for round_ in range(warmup + iterations):
        for name, call in calls.items():
            started = time.perf_counter()
            await call()
            if round_ >= warmup:
                samples[name].values.append((time.perf_counter() - started) * 1000)
    return list(samples.values())


def operations(environ: dict[str, str], stacks_dir: Path) -> ComposeOperations:
    """The gateway's operations on the engine ``environ``'s DOCKER_* variables name, as ``serve`` builds them."""
    settings = load_settings(environ, stacks_dir=stacks_dir)
    return ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, environ=environ)


async def through_gateways(
    args: argparse.Namespace, hosts: dict[str, Any], local_env: dict[str, str], root: Path
) -> list[Sample]:
    """``list_stacks`` as an MCP client sees it: a gateway of one engine, and a fleet of three."""
    config = root / "config.json"
    config.write_text(json.dumps({"hosts": hosts}))
    environ = {**local_env, "CONFIG_PATH": str(config), "COMPOSE_AGENT_STATE_DIR": str(root / "state")}
    settings = load_settings(environ, stacks_dir=root / "stacks")
    local = ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, environ=environ)
    fleet = Fleet.from_settings(settings, local, plane=ControlPlane.COMPOSE_AGENT, environ=environ)
    try:
        async with Client(build_server(local)) as one, Client(build_server(local, fleet=fleet)) as three:
            for client in (one, three):  # connect every engine before timing
                listed = await client.call_tool("list_stacks", {})
                assert not listed.is_error, listed.content
            return await alternate(
                {
                    "`list_stacks` tool, a gateway of the local engine": lambda: one.call_tool("list_stacks", {}),
                    "`list_stacks` tool, a fleet of local + TLS + SSH": lambda: three.call_tool("list_stacks", {}),
                },
                args.iterations,
            )
    finally:
        fleet.close()


async def measure(args: argparse.Namespace, project: str, envs: dict[str, dict[str, str]], root: Path) -> list[Sample]:
    stacks = root / "stacks"
    stacks.mkdir()
    ops = {name: operations(env, stacks) for name, env in envs.items()}
    try:
        for one in ops.values():  # connect (ssh: the first session) and negotiate before timing
            await one.ps(project)

        def ps(name: str) -> Call:
            return lambda: ops[name].ps(project)

        async def fleet_listing() -> object:
            async with anyio.create_task_group() as tg:
                for one in ops.values():
                    tg.start_soon(one.list_stacks)
            return None

        samples = await alternate(
            {
                **{f"`ps` through the gateway, {name} engine": ps(name) for name in ops},
                "`list_stacks`, local engine": ops["local"].list_stacks,
                "`list_stacks`, the three engines side by side": fleet_listing,
            },
            args.iterations,
        )

        def cli(name: str, *argv: str) -> Call:
            return lambda: anyio.run_process(["docker", *argv], env=envs[name])

        async def cli_ls_in_turn() -> object:
            for name in envs:
                await anyio.run_process(["docker", "compose", "ls", "--all"], env=envs[name])
            return None

        async def cli_ls_side_by_side() -> object:
            async with anyio.create_task_group() as tg:
                for name in envs:
                    tg.start_soon(cli(name, "compose", "ls", "--all"))
            return None

        samples += await alternate(
            {
                **{
                    f"`docker compose ps --format json`, {name} engine": cli(
                        name, "compose", "-p", project, "ps", "--format", "json"
                    )
                    for name in envs
                },
                "`docker compose ls`, local engine": cli("local", "compose", "ls", "--all"),
                "`docker compose ls`, the three engines in turn": cli_ls_in_turn,
                "`docker compose ls`, the three engines side by side": cli_ls_side_by_side,
            },
            max(10, args.iterations // 10),
            warmup=2,
        )
        return samples
    finally:
        for one in ops.values():
            one.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from tests.engines import ensure_engine_image, in_parallel, start_engine

    project = random_name("fleet")
    root = Path(tempfile.mkdtemp(prefix="compose-agent-fleet-"))
    compose_file = root / "compose.yaml"
    image = ensure_busybox_image()
    compose_file.write_text(compose_yaml(image, args.services))
    interrupt_on_sigterm()
    before = machine_context()
    engine_image = ensure_engine_image()
    remote: list[Any] = []
    envs: dict[str, dict[str, str]] = {}
    try:
        remote = in_parallel(
            [lambda: start_engine(engine_image, tls=True), lambda: start_engine(engine_image, ssh=True)]
        )
        tls, ssh = remote
        local_env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        envs = {"local": local_env, "TLS": tls.environ("tls", local_env), "SSH": ssh.environ("ssh", local_env)}
        for engine in remote:
            engine.load_image(image)
        for env in envs.values():
            up = ["docker", "compose", "-p", project, "-f", str(compose_file), "up", "-d"]
            subprocess.run(up, env=env, check=True, capture_output=True)
        samples = anyio.run(measure, args, project, envs, root)
        hosts = {
            "tls": {
                "docker_host": tls.tls_host,
                "tls_verify": True,
                "cert_path": str(tls.tls_dir),
                "stacks_dir": str(root / "tls-stacks"),
            },
            "ssh": {"docker_host": ssh.ssh_host, "stacks_dir": str(root / "ssh-stacks")},
        }
        samples += anyio.run(through_gateways, args, hosts, local_env, root)
    finally:
        for env in envs.values():
            down = ["docker", "compose", "-p", project, "-f", str(compose_file), "down", "--timeout", "1"]
            subprocess.run(down, env=env, capture_output=True, check=False)
        for engine in remote:
            engine.remove()
        subprocess.run(["rm", "-rf", str(root)], check=False)
    after = machine_context()

    print(f"{args.services} running services on each engine; {os.cpu_count()} CPUs\n")
    print("| what | p50 ms | p95 ms |\n| --- | ---: | ---: |")
    for sample in samples:
        print(f"| {sample.name} | {sample.p50:.2f} | {sample.p95:.2f} |")
    by_name = {s.name: s.p50 for s in samples}
    local_ps = by_name["`ps` through the gateway, local engine"]
    for name in ("TLS", "SSH"):
        print(f"\n`ps` on the {name} engine: {by_name[f'`ps` through the gateway, {name} engine'] - local_ps:+.2f} ms")
    fleet = by_name["`list_stacks`, the three engines side by side"] / by_name["`list_stacks`, local engine"]
    print(f"`list_stacks` across three engines: {fleet:.2f}× the local one")
    tool = (
        by_name["`list_stacks` tool, a fleet of local + TLS + SSH"]
        / by_name["`list_stacks` tool, a gateway of the local engine"]
    )
    print(f"the `list_stacks` tool of a fleet of three: {tool:.2f}× a gateway of the local engine")
    print(f"\nmachine before: {before}\nmachine after:  {after}")
    if args.json:
        args.json.write_text(json.dumps({"samples": [s.as_dict() for s in samples], "machine": [before, after]}))
    return 0


if __name__ == "__main__":
    run_main(main)
