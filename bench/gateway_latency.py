"""Benchmark the compose-agent gateway against the Engine API floor and the bare Compose CLI.

    python bench/gateway_latency.py [--iterations 200] [--slow-iterations 15] [--startups 5] [--json out.json]

It makes its own 10-service busybox stack (random project name, temporary stacks dir), brings it
up with ``docker compose``, measures every figure in one run, prints a Markdown table with p50/p95
and the targets, and removes everything again, also on Ctrl-C or failure. Nothing here asserts on
time: a bench reports, and the reader judges (see docs/performance.md).

It drives the real entry point as a subprocess only, so what it times is what a client sees.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import docker
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402 - a script beside its helpers, not a package
    Sample,
    ensure_busybox_image,
    free_port,
    interrupt_on_sigterm,
    machine_context,
    random_name,
    run_main,
    stop_process,
    time_calls,
    wait_for_health,
)

SERVICES = 10
LOG_SERVICE = "logger"
LOG_LINES = 20_000
LOG_TAIL = 5_000
MAX_BYTES = 1024 * 1024  # the logs tool's maximum, so the gateway drops nothing the raw read returns
# Context only, not targets: the best Python peer we know, measured on the same kind of listing and logs.
PEER_PS_MS = 27.0
PEER_LOGS_MS = 52.0


def compose_yaml(image: str) -> str:
    """Ten services that start at once and stop on SIGTERM (init: true); one writes 20,000 lines first."""
    lines = ["services:"]
    lines += [
        f"  {LOG_SERVICE}:",
        f"    image: {image}",
        "    init: true",
        f'    command: ["sh", "-c", "seq 1 {LOG_LINES}; exec sleep 3600"]',
    ]
    for n in range(1, SERVICES):
        lines += [f"  svc{n}:", f"    image: {image}", "    init: true", '    command: ["sleep", "3600"]']
    return "\n".join(lines) + "\n"


def server_command() -> list[str]:
    """The gateway's real entry point, not a pyenv shim: a shim's own start-up is not the gateway's."""
    script = Path(sys.executable).parent / "compose-agent"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "gateway"]


@dataclass
class Row:
    what: str
    sample: Sample
    target: str = ""
    met: bool | None = None

    def as_dict(self) -> dict[str, object]:
        return {**self.sample.as_dict(), "what": self.what, "target": self.target, "met": self.met}


class Bench:
    """One run: the stack, the servers, the figures; ``close`` removes all of it."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.project = random_name("bench")
        self.root = Path(tempfile.mkdtemp(prefix="compose-agent-bench-"))
        self.stacks_dir = self.root / "stacks"
        self.state_dir = self.root / "state"
        self.folder = self.stacks_dir / self.project
        self.compose_file = self.folder / "compose.yaml"
        self.token = secrets.token_urlsafe(32)
        self.api = docker.APIClient(version="auto")
        self.http_server: subprocess.Popen[bytes] | None = None
        self.http_port = 0
        self.samples: dict[str, Sample] = {}
        self.notes: dict[str, object] = {}
        self.stack_up = False

    # -- set-up and tear-down -----------------------------------------------------------------

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        argv = ["docker", "compose", "-p", self.project, "-f", str(self.compose_file), *args]
        return subprocess.run(argv, cwd=self.folder, capture_output=True, check=check)

    def server_env(self) -> dict[str, str]:
        env = {
            "COMPOSE_AGENT_STATE_DIR": str(self.state_dir),
            "COMPOSE_AGENT_TOKEN": self.token,
            # The bench's own config.json must not be picked up from the current folder.
            "CONFIG_PATH": str(self.root / "no-config.json"),
        }
        for name in ("DOCKER_HOST", "PATH", "HOME"):
            if name in os.environ:
                env[name] = os.environ[name]
        return env

    def set_up(self) -> None:
        image = ensure_busybox_image()
        self.folder.mkdir(parents=True)
        self.state_dir.mkdir()
        self.compose_file.write_text(compose_yaml(image))
        self.stack_up = True  # from here on, close() brings it down even if up fails half-way
        self.compose("up", "-d")
        self.log_container = self.container_of(LOG_SERVICE)
        deadline = time.monotonic() + 60
        # Measuring before every line is written would compare reads of different sizes.
        while self.api.logs(self.log_container, tail=1).strip() != str(LOG_LINES).encode():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{LOG_SERVICE} did not write its {LOG_LINES} lines within 60 s")
            time.sleep(0.05)

    def container_of(self, service: str) -> str:
        label = [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]
        found = self.api.containers(all=True, filters={"label": label})
        if len(found) != 1:
            raise RuntimeError(f"expected one container for {service}, found {len(found)}")
        return str(found[0]["Id"])

    def start_http_server(self) -> None:
        self.http_port = free_port()
        with open(self.root / "http-server.log", "wb") as log:
            self.http_server = subprocess.Popen(
                [*server_command(), "serve", "--transport", "http", "--port", str(self.http_port)]
                + ["--stacks-dir", str(self.stacks_dir), "--log-level", "WARNING"]
                # The bench calls back to back, faster than the per-token rate meant for one agent.
                + ["--token-rate", "100000", "--token-burst", "100000"],
                env=self.server_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_for_health(f"http://127.0.0.1:{self.http_port}", self.http_server, self.root / "http-server.log")

    def close(self) -> None:
        if self.http_server is not None:
            stop_process(self.http_server)
        if self.stack_up:
            done = self.compose("down", "-v", "--remove-orphans", "-t", "2", check=False)
            if done.returncode != 0:
                print(f"warning: compose down failed: {done.stderr.decode()[-500:]}", file=sys.stderr)
        # Whatever a failed or interrupted run left (up may have made the network and then stopped),
        # the project's label finds it.
        label = {"label": f"com.docker.compose.project={self.project}"}
        for container in self.api.containers(all=True, filters=label):
            self.api.remove_container(container["Id"], force=True, v=True)
        for network in self.api.networks(filters=label):
            self.api.remove_network(network["Id"])
        for volume in (self.api.volumes(filters=label) or {}).get("Volumes") or []:
            self.api.remove_volume(volume["Name"], force=True)
        self.api.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- measurements -----------------------------------------------------------------------------

    def record(self, sample: Sample) -> Sample:
        self.samples[sample.name] = sample
        print(f"  {sample.name}: p50 {sample.p50:.2f} {sample.unit}, p95 {sample.p95:.2f} {sample.unit}", flush=True)
        return sample

    def engine_ps(self) -> object:
        return self.api.containers(all=True, filters={"label": f"com.docker.compose.project={self.project}"})

    def engine_logs(self) -> object:
        return self.api.logs(self.log_container, tail=LOG_TAIL, timestamps=True)

    def measure_direct(self) -> None:
        """The bare Compose CLI reads, for context (the floors are paired with the MCP calls instead)."""
        n = self.args.iterations
        self.record(time_calls("cli_ps", lambda: self.compose("ps", "--format", "json"), iterations=n, warmup=3))
        self.record(
            time_calls(
                "cli_logs", lambda: self.compose("logs", "--tail", str(LOG_TAIL), LOG_SERVICE), iterations=n, warmup=3
            )
        )

    async def measure_mcp(self, transport: str, client: Client) -> None:
        """ps, logs and (stdio only) a no-op up, each timed as one call_tool round trip seen by the client.

        Each MCP call alternates with its baseline (Engine API list, raw Engine log read, bare
        ``docker compose up -d``), so a change in the machine's load hits both sides of a ratio alike.
        """
        n, slow = self.args.iterations, self.args.slow_iterations
        await client.list_tools()  # a 2026 session wants the tool listed before it is called
        ps_args = {"project": self.project}
        logs_args = {"project": self.project, "services": [LOG_SERVICE], "tail": LOG_TAIL, "max_bytes": MAX_BYTES}

        first = await client.call_tool("ps", ps_args)
        services = (first.structured_content or {}).get("services", [])
        if first.is_error or len(services) != SERVICES:
            raise RuntimeError(f"ps over {transport} did not list {SERVICES} services: {first.content!r:.300}")
        logs = await client.call_tool("logs", logs_args)
        body = logs.structured_content or {}
        if logs.is_error or body.get("lines") != LOG_TAIL or body.get("truncated"):
            raise RuntimeError(f"logs over {transport} did not return {LOG_TAIL} whole lines: {body!r:.300}")

        await self.paired(
            f"mcp_{transport}_ps",
            lambda: client.call_tool("ps", ps_args),
            f"engine_ps@{transport}",
            self.engine_ps,
            n,
            20,
        )
        await self.paired(
            f"mcp_{transport}_logs",
            lambda: client.call_tool("logs", logs_args),
            f"engine_logs@{transport}",
            self.engine_logs,
            n,
            5,
        )
        if transport == "stdio":
            up = await client.call_tool("up", ps_args)
            if up.is_error:
                raise RuntimeError(f"up over {transport} failed: {up.content!r:.300}")
            await self.paired(
                "mcp_stdio_up",
                lambda: client.call_tool("up", ps_args),
                "cli_up",
                lambda: self.compose("up", "-d"),
                slow,
                2,
            )

    async def paired(
        self,
        name: str,
        call: Callable[[], Awaitable[Any]],
        base_name: str,
        base: Callable[[], object],
        iterations: int,
        warmup: int,
    ) -> None:
        """Time ``call`` (async, over MCP) and ``base`` (blocking, direct) alternately."""
        for _ in range(warmup):
            result = await call()
            if getattr(result, "is_error", False):
                raise RuntimeError(f"{name}: the call failed: {result.content!r:.300}")
            base()
        sample, base_sample = Sample(name), Sample(base_name)
        for _ in range(iterations):
            with sample.timing():
                await call()
            # Blocking the event loop here is harmless: no MCP message is in flight between calls.
            with base_sample.timing():
                base()
        self.record(sample)
        self.record(base_sample)

    async def measure_stdio(self) -> None:
        params = StdioServerParameters(
            command=server_command()[0],
            args=[*server_command()[1:], "serve", "--transport", "stdio", "--stacks-dir", str(self.stacks_dir)]
            + ["--log-level", "WARNING"],
            env=self.server_env(),
        )
        with open(self.root / "stdio-server.log", "w") as errlog:
            async with Client(stdio_transport(params, errlog)) as client:
                await self.measure_mcp("stdio", client)

    async def measure_http(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0)) as http:
            url = f"http://127.0.0.1:{self.http_port}/mcp"
            async with Client(streamable_http_client(url, http_client=http)) as client:
                await self.measure_mcp("http", client)
        # The session is closed; the process is idle and has served a few hundred calls.
        await anyio.sleep(1.0)
        assert self.http_server is not None
        self.record(Sample("http_idle_rss", [rss_mib(self.http_server.pid)], unit="MiB"))

    async def measure_startup(self) -> None:
        """Spawn to the first answered tools/list, a new stdio process each time."""
        sample = Sample("stdio_start_to_tools_list")
        for _ in range(self.args.startups):
            params = StdioServerParameters(
                command=server_command()[0],
                args=[*server_command()[1:], "serve", "--transport", "stdio", "--stacks-dir", str(self.stacks_dir)]
                + ["--log-level", "WARNING"],
                env=self.server_env(),
            )
            with open(self.root / "startup-server.log", "a") as errlog:
                # The clock stops at the answer, before the client shuts the server down.
                started = time.perf_counter()
                async with Client(stdio_transport(params, errlog)) as client:
                    tools = await client.list_tools()
                    sample.values.append((time.perf_counter() - started) * 1000)
            if not any(tool.name == "ps" for tool in tools.tools):
                raise RuntimeError("tools/list did not offer ps")
        self.record(sample)

    # -- report -------------------------------------------------------------------------------------

    def rows(self) -> list[Row]:
        s = self.samples

        def check(what: str, name: str, base: str, limit: float, label: str) -> Row:
            sample, floor = s[name], s[base].p50
            ratio = sample.p50 / floor
            target = f"≤ {limit:g}× {label} ({floor:.1f} ms paired): is {ratio:.1f}×"
            return Row(what, sample, target, ratio <= limit)

        rows = [
            Row(
                "Engine API list of the project (floor)", pooled("engine_ps", s["engine_ps@stdio"], s["engine_ps@http"])
            ),
            Row("`docker compose ps --format json`", s["cli_ps"]),
            check("`ps` over MCP stdio", "mcp_stdio_ps", "engine_ps@stdio", 3, "floor"),
            check("`ps` over MCP HTTP", "mcp_http_ps", "engine_ps@http", 3, "floor"),
            Row(
                f"Engine API logs, tail {LOG_TAIL} (raw read)",
                pooled("engine_logs", s["engine_logs@stdio"], s["engine_logs@http"]),
            ),
            Row(f"`docker compose logs --tail {LOG_TAIL}`", s["cli_logs"]),
            check(f"`logs` tail {LOG_TAIL} over MCP stdio", "mcp_stdio_logs", "engine_logs@stdio", 2, "raw"),
            check(f"`logs` tail {LOG_TAIL} over MCP HTTP", "mcp_http_logs", "engine_logs@http", 2, "raw"),
            Row("`docker compose up -d` (no-op)", s["cli_up"]),
            check("no-op `up` over MCP stdio", "mcp_stdio_up", "cli_up", 1.2, "CLI"),
        ]
        start = s["stdio_start_to_tools_list"]
        rows.append(Row("spawn to first `tools/list` (stdio)", start, "< 1000 ms", start.p50 < 1000))
        rss = s["http_idle_rss"]
        # The target says 80 MB; read as MiB it is the lenient reading, so show the SI figure too.
        si_mb = rss.p50 * 1.048576
        rows.append(
            Row("idle RSS of the HTTP server", rss, f"< 80 MiB (measured = {si_mb:.1f} MB in SI)", rss.p50 < 80)
        )
        return rows


def pooled(name: str, *samples: Sample) -> Sample:
    return Sample(name, [v for sample in samples for v in sample.values])


def stdio_transport(params: StdioServerParameters, errlog: Any) -> AbstractAsyncContextManager[Any]:
    from mcp.client.stdio import stdio_client

    return stdio_client(params, errlog=errlog)


def rss_mib(pid: int) -> float:
    """VmRSS in MiB (the kernel reports KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def markdown(rows: list[Row]) -> str:
    out = ["| what | p50 | p95 | target | met? |", "| --- | ---: | ---: | --- | --- |"]
    for row in rows:
        unit = row.sample.unit
        fmt = "{:.1f} MiB" if unit == "MiB" else "{:.2f} ms"
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        p95 = "" if len(row.sample.values) == 1 else fmt.format(row.sample.p95)
        out.append(f"| {row.what} | {fmt.format(row.sample.p50)} | {p95} | {row.target} | {met} |")
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200, help="timed calls per fast operation (default 200)")
    parser.add_argument("--slow-iterations", type=int, default=15, help="timed no-op `up` calls (default 15)")
    parser.add_argument("--startups", type=int, default=5, help="server start-ups to time (default 5)")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    interrupt_on_sigterm()
    before = machine_context()
    bench = Bench(args)
    with ExitStack() as stack:
        stack.callback(bench.close)
        print(f"stack {bench.project}: {SERVICES} busybox services; load before: {before}", flush=True)
        bench.set_up()
        bench.measure_direct()
        anyio.run(bench.measure_stdio)
        bench.start_http_server()
        anyio.run(bench.measure_http)
        anyio.run(bench.measure_startup)
        after = machine_context()
    rows = bench.rows()
    print()
    print(markdown(rows))
    print()
    print(
        f"Context: the best Python peer we know takes {PEER_PS_MS:.0f} ms for the same listing "
        f"and {PEER_LOGS_MS:.0f} ms for those logs. Targets compare p50s measured in this run."
    )
    load_before, load_after = before["loadavg_1m_5m_15m"], after["loadavg_1m_5m_15m"]
    print(f"Machine: {after['cpus']} CPUs; load average (1, 5, 15 min) before {load_before}, after {load_after}")
    if args.json:
        report = {
            "project_services": SERVICES,
            "iterations": args.iterations,
            "slow_iterations": args.slow_iterations,
            "startups": args.startups,
            "machine_before": before,
            "machine_after": after,
            "peer": {"ps_ms": PEER_PS_MS, "logs_ms": PEER_LOGS_MS},
            "rows": [row.as_dict() for row in rows],
            "samples": {name: sample.as_dict() for name, sample in bench.samples.items()},
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_main(main)
