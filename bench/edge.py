"""The edge under load: what the gateway holds, how fast it refuses at its cap, what /health costs.

    python bench/edge.py [--connections 1500] [--refusals 300] [--health 2000] [--json out.json]

Each figure on a fresh `compose-agent serve` (on this machine's descriptor limit, which the cap
stays within; see gateway/mcp/edge.py), with clients on plain sockets:

1. **held from one address, defaults**: ``--connections`` idle connections opened from 127.0.0.1;
   how many the gateway still holds once they are all open (its per-peer cap, 32, spares the
   connections younger than a second), and after its header timeout (here 3 s): none.
2. **held at the cap**: the same with the per-peer cap lifted (and a long header timeout, so that
   opening them all takes less): the gateway holds its whole cap of idle unauthenticated
   connections (1024 by default); RSS per connection.
3. **refusing at the cap**: a cap of 20 filled with authenticated keep-alive connections (which are
   never closed to make room), then ``--refusals`` new connections: the time from ``connect()`` to
   the gateway closing it.
4. **/health**: ``--health`` requests on one kept-alive connection (the probe reused for 2 s), and a
   few with the probe run afresh each time (the engine pinged, the descriptors counted).

Nothing here asserts; it prints figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _common import (
    Sample,
    free_port,
    interrupt_on_sigterm,
    machine_context,
    markdown_table,
    run_main,
    stop_process,
    wait_for_health,
)

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def gateway(workdir: Path, *args: str) -> Iterator[tuple[int, str, subprocess.Popen[bytes]]]:
    """A `compose-agent serve` on a free port: (port, its token, the process)."""
    port = free_port()
    token = secrets.token_urlsafe(24)
    state = workdir / f"state-{port}"
    stacks = workdir / "stacks"
    stacks.mkdir(exist_ok=True)
    log = workdir / f"gateway-{port}.log"
    env = {
        **os.environ,
        "COMPOSE_AGENT_TOKEN": token,
        "STATUS_PANEL_TOKEN": secrets.token_urlsafe(24),
        "COMPOSE_AGENT_STATE_DIR": str(state),
    }
    argv = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--stacks-dir", str(stacks), *args]
    with log.open("wb") as err:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for_health(f"http://127.0.0.1:{port}", process, log)
        yield port, token, process
    finally:
        stop_process(process)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def health(port: int) -> dict[str, object]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/health")
        body: dict[str, object] = json.loads(connection.getresponse().read())
        return body
    finally:
        connection.close()


def open_idle(port: int, count: int) -> list[socket.socket]:
    held = []
    for _ in range(count):
        try:
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            continue
    return held


def held_connections(workdir: Path, count: int, *args: str, wait: float = 0) -> tuple[int, float, float]:
    """(connections the gateway holds, RSS before, RSS after) ``wait`` s after ``count`` idle ones were opened."""
    with gateway(workdir, *args) as (port, _, process):
        before = rss_mib(process.pid)
        sockets = open_idle(port, count)
        time.sleep(wait)  # a bench may wait
        held = int(str(health(port)["connections"])) - 1  # less the probe's own
        after = rss_mib(process.pid)
        for sock in sockets:
            sock.close()
    return held, before, after


def refusal_times(workdir: Path, refusals: int) -> Sample:
    sample = Sample("connect -> closed, at a cap full of authenticated connections")
    with gateway(workdir, "--max-connections", "20", "--keep-alive-timeout", "600") as (port, token, _):
        kept = []
        for _ in range(20):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/mcp", headers={"Authorization": f"Bearer {token}"})
            connection.getresponse().read()
            kept.append(connection)
        for _ in range(refusals):
            started = time.perf_counter()
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                try:
                    sock.recv(1)
                except OSError:
                    pass
            sample.values.append((time.perf_counter() - started) * 1000)
        for connection in kept:
            connection.close()
    return sample


def health_times(workdir: Path, requests: int) -> list[Sample]:
    cached = Sample("/health, probe reused (one keep-alive connection)")
    fresh = Sample("/health, probe run afresh (engine ping, descriptors counted)")
    with gateway(workdir) as (port, _, _process):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(requests):
            with cached.timing():
                connection.request("GET", "/health")
                connection.getresponse().read()
        for _ in range(5):
            time.sleep(2.1)  # past the probe's reuse time
            with fresh.timing():
                connection.request("GET", "/health")
                connection.getresponse().read()
        connection.close()
    return [cached, fresh]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1500)
    parser.add_argument("--refusals", type=int, default=300)
    parser.add_argument("--health", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    interrupt_on_sigterm()
    context = machine_context()
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp:
        workdir = Path(tmp)
        one_peer = held_connections(workdir, args.connections, "--header-timeout", "3")
        timed_out = held_connections(workdir, args.connections, "--header-timeout", "3", wait=4)
        at_cap = held_connections(
            workdir, args.connections, "--max-connections-per-peer", "100000", "--header-timeout", "600"
        )
        refused = refusal_times(workdir, args.refusals)
        healths = health_times(workdir, args.health)
    per_connection_kib = (at_cap[2] - at_cap[1]) * 1024 / max(1, at_cap[0])
    figures = {
        "held_from_one_address": one_peer[0],
        "held_after_the_header_timeout": timed_out[0],
        "held_at_the_cap": at_cap[0],
        "rss_mib_before_after_at_the_cap": [round(at_cap[1], 1), round(at_cap[2], 1)],
        "rss_kib_per_idle_connection": round(per_connection_kib, 1),
        "samples": [s.as_dict() for s in (refused, *healths)],
    }
    print(f"machine: {context} -> {machine_context()}")
    print(
        f"idle connections opened from one address: {args.connections}; held once all were open: {one_peer[0]};"
        f" after the header timeout: {timed_out[0]}"
    )
    print(f"with the per-peer cap lifted: held {at_cap[0]} (the cap); RSS {at_cap[1]:.1f} -> {at_cap[2]:.1f} MiB,")
    print(f"  {per_connection_kib:.1f} KiB per idle connection")
    print(markdown_table([refused, *healths]))
    cached = healths[0]
    if cached.values:
        rate = 1000 / (sum(cached.values) / len(cached.values))
        print(f"/health, probe reused: {rate:.0f} requests/s on one connection")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    run_main(main)
