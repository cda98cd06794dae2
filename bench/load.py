"""Load on the gateway: concurrent MCP clients over Streamable HTTP, against a trivial tool's floor.

    python bench/load.py [--clients 20] [--duration 60] [--rounds 3] [--cpu-duration 10] [--rate 150]
                         [--json out.json]

One run; each phase on a fresh set of clients (worker processes, so that the clients' own CPU
does not queue behind one interpreter), every client connected, listed and warmed by one call
before the clock starts:

1. **mix**: ``--clients`` clients call ``ps`` (79 %), ``logs`` (20 %) and ``restart`` of one
   service (1 %) as fast as they can for ``--duration`` seconds. p50/p99 per tool, errors, the
   gateway's RSS every 5 s and its CPU time per call.
2. Then ``--rounds`` times, taking turns for ``--cpu-duration`` seconds each:
   - **ps**: the clients call only ``ps``: the gateway's CPU time per ``ps`` call;
   - **floor**: the clients call ``ping()`` (returns ``"pong"``) of a bare ``MCPServer`` on the
     same SDK and transport, with the same bearer-token auth;
   - **echo**: the clients call ``echo(project)`` on that server: a trivial tool whose call
     carries one argument, as ``ps``'s does (the SDK's own argument handling costs CPU too).

CPU time is the server process's own (user + system, from ``/proc/<pid>/stat``), so it does not
move with the machine's load the way latency does; Compose CLI children are not counted.

The CPU rounds run twice, in turns: **saturated** (every client calls as fast as it can) and
**paced** (the clients together make ``--rate`` calls a second, evenly spread, a rate both servers
keep up with). A saturated server batches more work into each turn of its event loop, so its CPU
per call falls as its rate rises, and the faster server is flattered; on a shared machine the rates
of the two also move with whatever else runs. Paced, both answer the same calls a second, so their
CPU per call compares the work each call costs. The
gateway runs with ``--token-rate 100000``: the clients share one token, and the default per-token
rate (20/s) is meant for one agent, not for twenty. Nothing here asserts; it prints figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402 - a script beside its helpers, not a package
    ensure_busybox_image,
    free_port,
    interrupt_on_sigterm,
    machine_context,
    percentile,
    random_name,
    run_main,
    stop_process,
)

MIX = (("ps", 0.79), ("logs", 0.20), ("restart", 0.01))
TICK = os.sysconf("SC_CLK_TCK")


def compose_yaml(image: str) -> str:
    """Five services that start at once and stop on SIGTERM; ``logger`` has 2,000 lines to read."""
    lines = [
        "services:",
        "  logger:",
        f"    image: {image}",
        "    init: true",
        '    command: ["sh", "-c", "seq 1 2000; exec sleep 3600"]',
    ]
    for name in ("web", "worker", "cache", "queue"):
        lines += [f"  {name}:", f"    image: {image}", "    init: true", '    command: ["sleep", "3600"]']
    return "\n".join(lines) + "\n"


# -- the floor: a bare MCPServer with one trivial tool ------------------------------------------------


def serve_floor(port: int, token: str) -> None:
    """Run the floor server in this process (``--serve-floor``)."""
    import uvicorn
    from mcp.server.auth.provider import AccessToken
    from mcp.server.auth.settings import AuthSettings
    from mcp.server.mcpserver import MCPServer
    from pydantic import AnyHttpUrl

    class Verifier:
        async def verify_token(self, presented: str) -> AccessToken | None:
            return AccessToken(token=presented, client_id="bench", scopes=[]) if presented == token else None

    mcp: MCPServer = MCPServer(
        "floor",
        token_verifier=Verifier(),
        auth=AuthSettings(issuer_url=AnyHttpUrl(f"http://127.0.0.1:{port}"), resource_server_url=None),
        log_level="WARNING",
    )

    @mcp.tool()
    async def ping() -> str:
        """Answer pong."""
        return "pong"

    @mcp.tool()
    async def echo(project: str) -> str:
        """Answer the argument: a trivial tool whose call carries an argument, as ps's does."""
        return project

    app = mcp.streamable_http_app(host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- clients -------------------------------------------------------------------------------------------


@dataclass
class WorkerResult:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)


def _arguments(tool: str, project: str) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {
        "logs": {"project": project, "services": ["logger"], "tail": 200},
        "restart": {"project": project, "services": ["worker"]},
        "ping": {},
    }
    return table.get(tool, {"project": project})


async def _client_loop(
    url: str,
    token: str,
    plan: str,
    project: str,
    start: float,
    until: float,
    seed: int,
    out: WorkerResult,
    interval: float = 0.0,
) -> None:
    """Call tools from ``start`` to ``until``: back to back, or (``interval`` > 0) one call every ``interval`` s."""
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(60.0, read=300.0)) as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            # Connected, listed, and one untimed call made before the clock starts: what is measured
            # is the steady state, not the first call's caches (the policy verdict, the compose model).
            await client.list_tools()
            await client.call_tool(
                "ps" if plan == "mix" else plan, _arguments("ps" if plan == "mix" else plan, project)
            )
            # Paced clients start at spread-out offsets, so that their calls do not come in bursts.
            next_at = start + (rng.uniform(0.0, interval) if interval else 0.0)
            await anyio.sleep(max(0.0, next_at - time.monotonic()))
            while time.monotonic() < until:
                if interval:
                    # The next slot; a client that fell behind skips slots rather than catch up in a burst.
                    next_at = max(next_at + interval, time.monotonic())
                if plan == "mix":
                    tool = rng.choices([t for t, _ in MIX], weights=[w for _, w in MIX])[0]
                else:
                    tool = plan
                args = _arguments(tool, project)
                started = time.perf_counter()
                try:
                    result = await client.call_tool(tool, args)
                    failed = result.is_error
                    detail = str(result.content[0].text if result.content else "")[:200] if failed else ""  # type: ignore[union-attr]
                except Exception as exc:  # noqa: BLE001 - every failure is counted, whatever its kind
                    failed, detail = True, f"{type(exc).__name__}: {exc}"[:200]
                elapsed = (time.perf_counter() - started) * 1000
                if failed:
                    out.errors[tool] = out.errors.get(tool, 0) + 1
                    if len(out.error_samples) < 5:
                        out.error_samples.append(f"{tool}: {detail}")
                else:
                    out.latencies.setdefault(tool, []).append(elapsed)
                if interval:
                    await anyio.sleep(max(0.0, next_at - time.monotonic()))


def _worker(
    url: str,
    token: str,
    plan: str,
    project: str,
    clients: int,
    start_at: float,
    until: float,
    seed: int,
    interval: float,
    queue: Any,
) -> None:
    out = WorkerResult()

    async def main() -> None:
        start = time.monotonic() + (start_at - time.time())
        deadline = time.monotonic() + (until - time.time())
        async with anyio.create_task_group() as tg:
            for n in range(clients):
                tg.start_soon(_client_loop, url, token, plan, project, start, deadline, seed * 1000 + n, out, interval)

    try:
        anyio.run(main)
    except Exception as exc:  # noqa: BLE001 - reported to the parent instead of dying silently
        out.error_samples.append(f"worker crashed: {_leaves(exc)}"[:500])
        out.errors["worker"] = out.errors.get("worker", 0) + 1
    queue.put((out.latencies, out.errors, out.error_samples))


def _leaves(exc: BaseException) -> str:
    """What actually went wrong inside (possibly nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_leaves(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


# -- measuring the server ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14 and 15 of stat)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Phase:
    name: str
    seconds: float
    latencies: dict[str, list[float]]
    errors: dict[str, int]
    error_samples: list[str]
    cpu_s: float
    rss: list[tuple[float, float]]

    @property
    def calls(self) -> int:
        return sum(len(v) for v in self.latencies.values()) + sum(self.errors.values())

    def cpu_ms_per_call(self) -> float:
        return self.cpu_s * 1000 / max(1, self.calls)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": self.seconds,
            "calls": self.calls,
            "calls_per_s": round(self.calls / self.seconds, 1),
            "cpu_s": round(self.cpu_s, 2),
            "cpu_ms_per_call": round(self.cpu_ms_per_call(), 3),
            "errors": self.errors,
            "error_samples": self.error_samples,
            "tools": {
                tool: {"n": len(v), "p50_ms": round(percentile(v, 50), 2), "p99_ms": round(percentile(v, 99), 2)}
                for tool, v in sorted(self.latencies.items())
            },
            "rss_mib": [(round(t, 1), round(r, 1)) for t, r in self.rss],
        }


def run_phase(
    name: str,
    url: str,
    token: str,
    plan: str,
    project: str,
    pid: int,
    args: argparse.Namespace,
    seconds: float,
    rate: float = 0.0,
) -> Phase:
    """One phase on fresh clients; ``rate`` > 0 paces them to that many calls a second in all."""
    interval = args.clients / rate if rate > 0 else 0.0
    procs = max(1, min(args.procs, args.clients))
    per = [args.clients // procs + (1 if n < args.clients % procs else 0) for n in range(procs)]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    # Every client connects, lists the tools and makes one call first; the clock starts after that.
    start_at = time.time() + 8.0
    until = start_at + seconds
    workers = [
        ctx.Process(
            target=_worker, args=(url, token, plan, project, n, start_at, until, i, interval, queue), daemon=True
        )
        for i, n in enumerate(per)
    ]
    for worker in workers:
        worker.start()
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before, t0 = cpu_seconds(pid), time.monotonic()
    rss = [(0.0, rss_mib(pid))]
    while time.time() < until:
        time.sleep(min(5.0, max(0.0, until - time.time())))
        rss.append((time.monotonic() - t0, rss_mib(pid)))
    results = [queue.get(timeout=120) for _ in workers]
    cpu = cpu_seconds(pid) - cpu_before
    for worker in workers:
        worker.join(30)
    latencies: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    samples: list[str] = []
    for lat, err, smp in results:
        for tool, values in lat.items():
            latencies.setdefault(tool, []).extend(values)
        for tool, count in err.items():
            errors[tool] = errors.get(tool, 0) + count
        samples.extend(smp)
    phase = Phase(name, seconds, latencies, errors, samples[:5], cpu, rss)
    summary = phase.as_dict()
    print(
        f"  {name}: {summary['calls']} calls ({summary['calls_per_s']}/s), {sum(errors.values())} errors, "
        f"CPU {summary['cpu_ms_per_call']:.2f} ms/call, "
        + ", ".join(f"{t} p50 {v['p50_ms']} p99 {v['p99_ms']} ms" for t, v in summary["tools"].items()),
        flush=True,
    )
    return phase


def merged(name: str, phases: list[Phase]) -> Phase:
    """Several rounds of one phase as one: calls, CPU and latencies summed."""
    latencies: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    for phase in phases:
        for tool, values in phase.latencies.items():
            latencies.setdefault(tool, []).extend(values)
        for tool, count in phase.errors.items():
            errors[tool] = errors.get(tool, 0) + count
    samples = [sample for phase in phases for sample in phase.error_samples][:5]
    seconds = sum(phase.seconds for phase in phases)
    return Phase(name, seconds, latencies, errors, samples, sum(p.cpu_s for p in phases), [])


# -- the run -------------------------------------------------------------------------------------------


class LoadBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.project = random_name("load")
        self.root = Path(tempfile.mkdtemp(prefix="compose-agent-load-"))
        self.stacks_dir = self.root / "stacks"
        self.folder = self.stacks_dir / self.project
        self.token = secrets.token_urlsafe(32)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.stack_up = False

    def compose(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        cmd = ["docker", "compose", "-p", self.project, "-f", str(self.folder / "compose.yaml"), *argv]
        return subprocess.run(cmd, cwd=self.folder, capture_output=True, check=check)

    def start(self, argv: list[str], name: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        with open(self.root / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                [*argv, "--port", str(port)] if name == "gateway" else [*argv, str(port), self.token],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.processes.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: see {self.root / (name + '.log')}")
            try:
                urllib.request.urlopen(f"{base}/mcp", timeout=1)
            except urllib.error.HTTPError:
                return proc, f"{base}/mcp"  # any HTTP answer: it listens (401/405 without a session)
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer within 30 s")
            time.sleep(0.1)

    def run(self) -> dict[str, Any]:
        image = ensure_busybox_image()
        self.folder.mkdir(parents=True)
        (self.folder / "compose.yaml").write_text(compose_yaml(image))
        self.stack_up = True
        self.compose("up", "-d")
        env = {
            "COMPOSE_AGENT_STATE_DIR": str(self.root / "state"),
            "COMPOSE_AGENT_TOKEN": self.token,
            "CONFIG_PATH": str(self.root / "no-config.json"),
            # PYTHONPATH lets one bench run an older checkout of the gateway, for a before/after.
            **{k: os.environ[k] for k in ("PATH", "HOME", "DOCKER_HOST", "PYTHONPATH") if k in os.environ},
        }
        script = Path(sys.executable).parent / "compose-agent"
        gateway_argv = [str(script)] if script.is_file() else [sys.executable, "-m", "gateway"]
        gateway_argv += ["serve", "--stacks-dir", str(self.stacks_dir), "--log-level", "WARNING"]
        gateway_argv += ["--token-rate", "100000", "--token-burst", "100000"]
        gateway, gateway_url = self.start(gateway_argv, "gateway", env)
        floor, floor_url = self.start([sys.executable, __file__, "--serve-floor"], "floor", env)
        print(f"stack {self.project}; gateway pid {gateway.pid}, floor pid {floor.pid}", flush=True)
        a = self.args
        report: dict[str, Phase] = {}
        ratios: dict[str, list[float]] = {}
        if a.duration > 0:
            report["mix"] = run_phase("mix", gateway_url, self.token, "mix", self.project, gateway.pid, a, a.duration)
        # ps and the floor take turns, so that a change in the machine's load falls on both alike.
        for mode, rate in (("", 0.0), ("paced ", a.rate)):
            if mode and rate <= 0:
                continue
            rounds: list[tuple[Phase, Phase, Phase]] = []
            for n in range(1, a.rounds + 1):
                ps, ping, echo = (
                    run_phase(f"{mode}{label} {n}", url, self.token, tool, self.project, pid, a, a.cpu_duration, rate)
                    for label, url, tool, pid in (
                        ("ps", gateway_url, "ps", gateway.pid),
                        ("floor", floor_url, "ping", floor.pid),
                        ("echo", floor_url, "echo", floor.pid),
                    )
                )
                rounds.append((ps, ping, echo))
            if rounds:
                for i, label in enumerate(("ps", "floor", "echo")):
                    report[f"{mode}{label}"] = merged(f"{mode}{label}", [r[i] for r in rounds])
                ratios[f"{mode}ping"] = [round(r[0].cpu_ms_per_call() / r[1].cpu_ms_per_call(), 2) for r in rounds]
                ratios[f"{mode}echo"] = [round(r[0].cpu_ms_per_call() / r[2].cpu_ms_per_call(), 2) for r in rounds]
        out: dict[str, Any] = {name: phase.as_dict() for name, phase in report.items()}
        out["ratios"] = ratios
        return out

    def close(self) -> None:
        for proc in self.processes:
            stop_process(proc, timeout=15)
        if self.stack_up:
            self.compose("down", "-v", "--remove-orphans", "-t", "2", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def markdown(report: dict[str, Any]) -> str:
    out = [
        "| phase | calls/s | errors | server CPU per call | tool | p50 | p99 |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for phase in (v for k, v in report.items() if k != "ratios"):
        first = True
        for tool, figures in phase["tools"].items():
            lead = (
                f"| {phase['name']} | {phase['calls_per_s']} | {sum(phase['errors'].values())} | "
                f"{phase['cpu_ms_per_call']:.2f} ms "
                if first
                else "| | | | "
            )
            out.append(f"{lead}| `{tool}` | {figures['p50_ms']:.1f} ms | {figures['p99_ms']:.1f} ms |")
            first = False
    out.append("")
    if "mix" in report:
        mix = report["mix"]["rss_mib"]
        out.append(f"RSS of the gateway during the mix (s, MiB): {', '.join(f'{t:g}s {r:g}' for t, r in mix)}")
    for mode, how in (("", "saturated"), ("paced ", "paced")):
        for floor, what in (("floor", "`ping()`"), ("echo", "`echo(project)`")):
            if f"{mode}ps" in report and f"{mode}{floor}" in report:
                ratio = report[f"{mode}ps"]["cpu_ms_per_call"] / report[f"{mode}{floor}"]["cpu_ms_per_call"]
                rounds = ", ".join(
                    f"{r:.2f}x" for r in report["ratios"][f"{mode}{'ping' if floor == 'floor' else 'echo'}"]
                )
                out.append(
                    f"{how}: CPU per `ps` call / CPU per trivial {what} call, same run: {ratio:.2f}x over all "
                    f"rounds (rounds: {rounds}); the target is at most 1.5x"
                )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20, help="concurrent MCP clients (default 20)")
    parser.add_argument("--procs", type=int, default=4, help="client worker processes (default 4)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the mixed phase (default 60)")
    parser.add_argument("--cpu-duration", type=float, default=10.0, help="seconds of each ps and floor phase")
    parser.add_argument("--rounds", type=int, default=3, help="ps and floor phases, taking turns (default 3)")
    parser.add_argument(
        "--rate",
        type=float,
        default=150.0,
        help="calls a second, all clients together, of the paced CPU rounds (default 150; 0 skips them)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    parser.add_argument("--serve-floor", nargs=2, metavar=("PORT", "TOKEN"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_floor:
        serve_floor(int(args.serve_floor[0]), args.serve_floor[1])
        return 0
    interrupt_on_sigterm()
    before = machine_context()
    bench = LoadBench(args)
    try:
        report = bench.run()
    finally:
        bench.close()
    after = machine_context()
    print()
    print(markdown(report))
    print(
        f"Machine: {after['cpus']} CPUs; load average before {before['loadavg_1m_5m_15m']}, "
        f"after {after['loadavg_1m_5m_15m']}"
    )
    if args.json:
        args.json.write_text(json.dumps({"machine_before": before, "machine_after": after, **report}, indent=2))
    return 0


if __name__ == "__main__":
    run_main(main)
