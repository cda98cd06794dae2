"""Peak memory of the gateway for a huge log read with a tiny byte budget.

    python bench/logs_memory.py [--megabytes 96] [--max-bytes 1024] [--concurrent 4] [--gateway-source DIR]

It brings up one busybox service that prints about ``--megabytes`` MB of log (9,999 lines of equal
length, then a marker line) and sleeps, waits until the engine has the marker, and starts
``compose-agent serve`` (Streamable HTTP, a free loopback port, a random token). Then, for the
gateway process, it resets the kernel's peak-RSS mark (``/proc/PID/clear_refs``), makes one
``logs(tail=10000, max_bytes=...)`` call over MCP, and reads the new peak (``VmHWM``) against the
RSS just before; then the same for ``--concurrent`` calls at once. The answer the engine sends for
that read is measured too (its size in bytes).

``--gateway-source DIR`` runs the gateway from another checkout's ``gateway/`` (with this
environment's dependencies), to compare with an older version in the same run conditions.

Everything it made (stack, server, temporary folders) is removed afterwards, also on Ctrl-C.
Nothing here asserts: it prints figures (see docs/performance.md).
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
from pathlib import Path

import anyio
import docker
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402 - a script beside its helpers, not a package
    ensure_busybox_image,
    free_port,
    interrupt_on_sigterm,
    machine_context,
    random_name,
    stop_process,
    wait_for_health,
)

LINES = 9_999
MARKER = "flood-done"
# Runs `python -m gateway` from another checkout: an editable install's import hook would win over
# PYTHONPATH, so it is taken out first.
_FROM_SOURCE = (
    "import runpy, sys; "
    "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '')]; "
    "sys.path.insert(0, sys.argv[1]); sys.argv = ['gateway', *sys.argv[2:]]; "
    "runpy.run_module('gateway', run_name='__main__', alter_sys=True)"
)


def compose_yaml(image: str, line_bytes: int) -> str:
    # yes repeats one line; head stops it after LINES; the marker says the whole flood is logged.
    line = f'"$$(head -c {line_bytes} /dev/zero | tr "\\\\0" x)"'
    script = f"yes {line} | head -n {LINES}; echo {MARKER}; exec sleep 3600"
    return f"""services:
  flood:
    image: {image}
    init: true
    command: ["sh", "-c", {json.dumps(script)}]
"""


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def reset_peak(pid: int) -> None:
    # "5" resets the peak resident set size (VmHWM) to the current one (Linux 4.0 and later).
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.project = random_name("bench")
        self.root = Path(tempfile.mkdtemp(prefix="compose-agent-bench-"))
        self.folder = self.root / "stacks" / self.project
        self.token = secrets.token_urlsafe(32)
        self.api = docker.APIClient(version="auto")
        self.server: subprocess.Popen[bytes] | None = None
        self.port = 0

    def compose(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        argv = ["docker", "compose", "-p", self.project, "-f", str(self.folder / "compose.yaml"), *args]
        return subprocess.run(argv, cwd=self.folder, capture_output=True, check=False)

    def set_up(self) -> None:
        self.folder.mkdir(parents=True)
        line_bytes = self.args.megabytes * 1_000_000 // LINES
        (self.folder / "compose.yaml").write_text(compose_yaml(ensure_busybox_image(), line_bytes))
        done = self.compose("up", "-d")
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode()[-2000:])
        container = self.api.containers(filters={"label": f"com.docker.compose.project={self.project}"})[0]["Id"]
        deadline = time.monotonic() + 300
        while self.api.logs(container, tail=1).strip() != MARKER.encode():
            if time.monotonic() > deadline:
                raise RuntimeError("the flood was not logged within 300 s")
            time.sleep(0.2)
        # The size of the answer the gateway will get: read here, in the bench's own process.
        self.answer_bytes = len(self.api.logs(container, tail=10_000, timestamps=True))

    def start_server(self) -> None:
        self.port = free_port()
        env = {"COMPOSE_AGENT_TOKEN": self.token, "COMPOSE_AGENT_STATE_DIR": str(self.root / "state")}
        env["CONFIG_PATH"] = str(self.root / "no-config.json")
        for name in ("DOCKER_HOST", "PATH", "HOME"):
            if name in os.environ:
                env[name] = os.environ[name]
        command = [sys.executable, "-m", "gateway"]
        if self.args.gateway_source:
            command = [sys.executable, "-c", _FROM_SOURCE, str(Path(self.args.gateway_source).resolve())]
        with open(self.root / "server.log", "wb") as log:
            self.server = subprocess.Popen(
                [*command, "serve", "--port", str(self.port)]
                + ["--stacks-dir", str(self.root / "stacks"), "--log-level", "WARNING"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_for_health(f"http://127.0.0.1:{self.port}", self.server, self.root / "server.log")

    async def read_logs(self, calls: int) -> tuple[int, int, list[dict[str, object]]]:
        """RSS just before (KiB), peak during (KiB), and each call's result summary."""
        assert self.server is not None
        pid = self.server.pid
        results: list[dict[str, object]] = []
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=300) as http:
            async with streamable_http_client(f"http://127.0.0.1:{self.port}/mcp", http_client=http) as (r, w, *_):
                async with ClientSession(r, w) as session:
                    await session.initialize()
                    await session.call_tool("list_stacks", {})  # warm: the first call's own costs are not the logs'
                    before = status_kib(pid, "VmRSS")
                    reset_peak(pid)
                    args = {"project": self.project, "tail": 10_000, "max_bytes": self.args.max_bytes}

                    async def one() -> None:
                        result = await session.call_tool("logs", args)
                        content = result.structured_content or {}
                        results.append({k: content.get(k) for k in ("lines", "truncated", "dropped_lines")})

                    async with anyio.create_task_group() as tg:
                        for _ in range(calls):
                            tg.start_soon(one)
                    peak = status_kib(pid, "VmHWM")
        return before, peak, results

    def close(self) -> None:
        if self.server is not None:
            stop_process(self.server)
        if self.folder.exists():
            self.compose("down", "-v", "-t", "1")
        self.api.close()
        shutil.rmtree(self.root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=96, help="how much log the service prints")
    parser.add_argument("--max-bytes", type=int, default=1024, help="the logs call's byte budget")
    parser.add_argument("--concurrent", type=int, default=4, help="calls at once in the second round")
    parser.add_argument("--gateway-source", help="run the gateway from this checkout instead")
    args = parser.parse_args()

    interrupt_on_sigterm()
    bench = Bench(args)
    context = machine_context()
    try:
        bench.set_up()
        bench.start_server()
        rounds = []
        for calls in (1, args.concurrent):
            before, peak, results = anyio.run(bench.read_logs, calls)
            rounds.append((calls, before, peak, results))
    finally:
        bench.close()
    print(f"engine answer for tail=10000: {bench.answer_bytes / 1e6:.1f} MB; budget max_bytes={args.max_bytes}")
    print(f"gateway: {args.gateway_source or 'this checkout'}; machine: {context}\n")
    print("| calls at once | RSS before | peak RSS during | peak growth | result of each call |")
    print("| ---: | ---: | ---: | ---: | --- |")
    for calls, before, peak, results in rounds:
        print(
            f"| {calls} | {before / 1024:.1f} MiB | {peak / 1024:.1f} MiB | {(peak - before) / 1024:.1f} MiB "
            f"({(peak - before) * 1024 / 1e6:.1f} MB) | {results[0]} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
