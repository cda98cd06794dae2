"""What the Engine API reads behind ``ps`` cost, and which HTTP client should make them.

    python bench/engine_reads.py [--iterations 300] [--cpu-calls 2000] [--services 10] [--no-tls] [--json out.json]

On a stack of ``--services`` running busybox services (random project name, brought up with
``docker compose`` and removed afterwards, also on Ctrl-C):

1. **The client.** The project's container list, the request behind ``ps``, made by the gateway's
   own client (:mod:`gateway.engine.transport`, on the event loop, kept connections), by the MCP
   SDK's HTTP client (``httpx2.AsyncClient`` over the same Unix socket, keep-alive), and by
   docker-py in a worker thread (what the gateway used before). Each is timed call by call in
   turn (latency), then run ``--cpu-calls`` times alone and 8 at once to measure this process's
   CPU per call (what a busy gateway pays). With TLS (unless ``--no-tls``), the same over a TLS
   engine: a Docker-in-Docker engine started for the bench (tests/engines), the stack on it too.
2. **Start times.** ``ps`` rows with start times read from the list's "Up 5 minutes" text
   (inspecting only when a cached start no longer fits it) against one inspect per running
   container; and a fresh connection's first list, which pays the one ``GET /version``.
3. **Context.** ``docker compose ps --format json`` on the same stack.

Nothing here asserts on time: a bench reports, and the reader judges (see docs/performance.md).
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
import docker
import httpx2
from anyio import to_thread

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

from gateway.engine.channels import tls_context  # noqa: E402
from gateway.engine.client import Engine  # noqa: E402
from gateway.engine.containers import container_to_status  # noqa: E402
from gateway.engine.endpoint import EngineEndpoint  # noqa: E402

Call = Callable[[], Awaitable[object]]
SOCKET = "/var/run/docker.sock"


def compose_yaml(image: str, services: int) -> str:
    lines = ["services:"]
    for n in range(services):
        lines += [f"  svc{n}:", f"    image: {image}", "    init: true", '    command: ["sleep", "3600"]']
    return "\n".join(lines) + "\n"


async def alternate(calls: dict[str, Call], iterations: int, warmup: int = 20) -> list[Sample]:
    """Time each call once per round, round after round, so that load changes hit them all alike."""
    samples = {name: Sample(name) for name in calls}
    for round_ in range(warmup + iterations):
        for name, call in calls.items():
            started = time.perf_counter()
            await call()
            if round_ >= warmup:
                samples[name].values.append((time.perf_counter() - started) * 1000)
    return list(samples.values())


async def cpu_per_call(call: Call, calls: int, concurrency: int) -> float:
    """This process's CPU per call, in µs, for ``calls`` calls made ``concurrency`` at a time."""
    each = calls // concurrency

    async def worker() -> None:
        for _ in range(each):
            await call()

    started = time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return (time.process_time() - started) / (each * concurrency) * 1e6


class Clients:
    """The same list request, through each client, on one engine."""

    def __init__(self, engine: Engine, project: str, http: httpx2.AsyncClient, api: docker.APIClient | None) -> None:
        self.engine, self.http, self.api = engine, http, api
        self.filters = {"label": [f"com.docker.compose.project={project}"]}
        self.query = {"all": True, "filters": self.filters}

    async def hand_written(self) -> object:
        return await self.engine.connection.json("GET", "/containers/json", self.query)

    async def httpx(self) -> object:
        version = self.engine.connection.negotiated
        answer = await self.http.get(
            f"/v{version}/containers/json", params={"all": "1", "filters": json.dumps(self.filters)}
        )
        answer.raise_for_status()
        return answer.json()

    async def docker_py(self) -> object:
        assert self.api is not None
        api = self.api
        return await to_thread.run_sync(lambda: api.containers(all=True, filters={"label": self.filters["label"][0]}))

    def calls(self, where: str) -> dict[str, Call]:
        named: dict[str, Call] = {
            f"{where}: gateway's client, event loop (now)": self.hand_written,
            f"{where}: httpx2 (the SDK's client), event loop": self.httpx,
        }
        if self.api is not None:
            named[f"{where}: docker-py, worker thread (before)"] = self.docker_py
        return named


async def measure_clients(clients: Clients, where: str, args: argparse.Namespace) -> tuple[list[Sample], list[Sample]]:
    await clients.engine.connection.version()
    calls = clients.calls(where)
    latency = await alternate(calls, args.iterations)
    cpu = []
    for name, call in calls.items():
        for concurrency in (1, 8):
            sample = Sample(f"{name}, {concurrency} at a time", unit="µs CPU")
            for _ in range(3):
                sample.values.append(await cpu_per_call(call, args.cpu_calls, concurrency))
            cpu.append(sample)
    return latency, cpu


async def measure(args: argparse.Namespace, project: str, compose: list[str], tls: Any) -> list[list[Sample]]:
    engine = Engine()
    api = docker.APIClient(base_url=f"unix://{SOCKET}", version="auto")
    http = httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=SOCKET), base_url="http://docker")
    try:
        unix_latency, unix_cpu = await measure_clients(Clients(engine, project, http, api), "unix", args)
        tables = [unix_latency, unix_cpu]
        if tls is not None:
            remote = Engine(EngineEndpoint(tls.tls_host, tls_verify=True, cert_path=tls.tls_dir), name="tls")
            ca, cert, key = (str(tls.tls_dir / name) for name in ("ca.pem", "cert.pem", "key.pem"))
            secure = httpx2.AsyncClient(verify=tls_context(ca, cert, key), base_url=f"https://{tls.ip}:2376")
            try:
                tls_latency, tls_cpu = await measure_clients(Clients(remote, project, secure, None), "TLS", args)
            finally:
                await secure.aclose()
                remote.close()
            tables += [tls_latency, tls_cpu]

        async def rows_from_status_text() -> object:
            return [
                container_to_status(c, await engine.started_at_async(c) if c.get("State") == "running" else None)
                for c in await engine.project_containers_async(project)
            ]

        async def rows_from_inspects() -> object:
            rows = []
            for c in await engine.project_containers_async(project):
                info = await engine.inspect_async(c["Id"]) if c.get("State") == "running" else None
                rows.append(container_to_status(c, info["State"]["StartedAt"] if info else None))
            return rows

        async def compose_ps() -> object:
            return await anyio.run_process([*compose, "ps", "--format", "json"])

        async def first_list() -> object:
            fresh = Engine()
            try:
                return await fresh.project_containers_async(project)
            finally:
                fresh.close()

        rows = await alternate(
            {
                "ps rows, start times from the status text (now)": rows_from_status_text,
                f"ps rows, one inspect per running container ({args.services})": rows_from_inspects,
                "a fresh connection's first list (+ GET /version)": first_list,
            },
            args.iterations,
        )
        rows += await alternate({"`docker compose ps --format json`": compose_ps}, max(20, args.iterations // 10), 3)
        return [*tables, rows]
    finally:
        await http.aclose()
        api.close()
        engine.close()


def start_tls_engine(image: str, compose_file: Path, project: str) -> Any:
    """A TLS engine for the bench (tests/engines), with the same stack brought up on it."""
    from tests.engines import ensure_engine_image, start_engine

    engine = start_engine(ensure_engine_image(), tls=True)
    try:
        engine.load_image(image)
        env = engine.environ("tls")
        up = ["docker", "compose", "-p", project, "-f", str(compose_file), "up", "-d"]
        subprocess.run(up, env=env, check=True, capture_output=True)
    except BaseException:
        engine.remove()
        raise
    return engine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--cpu-calls", type=int, default=2000, help="calls per CPU measurement (3 of each)")
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--no-tls", action="store_true", help="skip the TLS engine (needs root and the engine image)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    project = random_name("bench")
    root = Path(tempfile.mkdtemp(prefix="compose-agent-bench-"))
    compose_file = root / "compose.yaml"
    image = ensure_busybox_image()
    compose_file.write_text(compose_yaml(image, args.services))
    compose = ["docker", "compose", "-p", project, "-f", str(compose_file)]

    interrupt_on_sigterm()
    before = machine_context()
    tls = None
    try:
        subprocess.run([*compose, "up", "-d"], check=True, capture_output=True)
        if not args.no_tls:
            tls = start_tls_engine(image, compose_file, project)
        tables = anyio.run(measure, args, project, compose, tls)
    finally:
        if tls is not None:
            tls.remove()
        subprocess.run([*compose, "down", "-v", "--timeout", "1"], capture_output=True, check=False)
        compose_file.unlink(missing_ok=True)
        root.rmdir()
    after = machine_context()

    print(f"{args.services} running services; {os.cpu_count()} CPUs\n")
    for table in tables:
        unit = table[0].unit
        print(f"| what | p50 {unit} | p95 {unit} |\n| --- | ---: | ---: |")
        for sample in table:
            print(f"| {sample.name} | {sample.p50:.2f} | {sample.p95:.2f} |")
        print()
    print(f"machine before: {before}\nmachine after:  {after}")
    if args.json:
        every = [s.as_dict() for table in tables for s in table]
        args.json.write_text(json.dumps({"samples": every, "machine": [before, after]}))
    return 0


if __name__ == "__main__":
    run_main(main)
