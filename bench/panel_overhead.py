"""What the status panel adds to a call: the gateway's own ``ps`` over MCP vs the panel's ``GET /api/v1/stacks/{p}``.

Starts ``compose-agent serve`` and ``status-panel serve`` as processes on free ports, brings up a
small busybox stack, then times, alternately and after warm-up:

- ``gateway_ps``: ``call_tool("ps")`` over Streamable HTTP with the panel's token, on one session;
- ``panel_ps``: ``GET /api/v1/stacks/{project}`` on the panel (keep-alive client, bearer token),
  which makes the same MCP call on its own long-lived session.

Prints p50/p95 of both and the difference of the medians. The target: under 5 ms at p50.

    python bench/panel_overhead.py                 # 300 timed calls each
    python bench/panel_overhead.py --iterations 100 --json /tmp/panel-bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import (  # noqa: E402 - a script beside its helpers, not a package
    Sample,
    ensure_busybox_image,
    free_port,
    machine_context,
    random_name,
    stop_process,
    wait_for_health,
)

# The tests' two-service stack: an httpd with a healthcheck and a worker that logs all the time.
from tests.conftest import STACK_FILES, WEB_WORKER  # noqa: E402


async def measure(
    gateway_url: str, panel_base: str, token: str, project: str, iterations: int, warmup: int
) -> list[Sample]:
    headers = {"Authorization": f"Bearer {token}"}
    gateway, panel = Sample("gateway_ps (MCP over HTTP)"), Sample("panel_ps (GET /api/v1/stacks/{p})")
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as mcp_http,
        Client(streamable_http_client(gateway_url, http_client=mcp_http)) as client,
        httpx2.AsyncClient(base_url=panel_base, headers=headers, timeout=30) as rest,
    ):

        async def via_gateway() -> None:
            result = await client.call_tool("ps", {"project": project})
            if result.is_error:
                raise SystemExit(f"gateway ps failed: {result.content!r:.300}")

        async def via_panel() -> None:
            response = await rest.get(f"/api/v1/stacks/{project}")
            if response.status_code != 200:
                raise SystemExit(f"panel ps failed: {response.status_code} {response.text[:300]}")

        for _ in range(warmup):
            await via_gateway()
            await via_panel()
        # Alternate, so drift in the machine's load hits both series alike.
        for _ in range(iterations):
            with gateway.timing():
                await via_gateway()
            with panel.timing():
                await via_panel()
    return [gateway, panel]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    image = ensure_busybox_image()
    project = random_name("panelbench")
    token, agent_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stack_dir = root / "stacks" / project
        stack_dir.mkdir(parents=True)
        (stack_dir / "compose.yaml").write_text(WEB_WORKER.replace("{image}", image))
        for rel, text in STACK_FILES.items():
            (stack_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (stack_dir / rel).write_text(text)
        env = {
            **os.environ,
            "COMPOSE_AGENT_TOKEN": agent_token,
            "STATUS_PANEL_TOKEN": token,
            "COMPOSE_AGENT_STATE_DIR": str(root / "state"),
            "CONFIG_PATH": str(root / "config.json"),
        }
        env.pop("COMPOSE_AGENT_ENABLED", None)
        gw_port, panel_port = free_port(), free_port()
        gateway_url = f"http://127.0.0.1:{gw_port}/mcp"
        try:
            with open(root / "gateway.log", "wb") as gw_log, open(root / "panel.log", "wb") as panel_log:
                procs.append(
                    subprocess.Popen(
                        ["compose-agent", "serve", "--port", str(gw_port), "--stacks-dir", str(root / "stacks")]
                        # Back-to-back calls, faster than the per-token rate meant for one panel.
                        + ["--token-rate", "100000", "--token-burst", "100000"],
                        env=env,
                        stdout=gw_log,
                        stderr=subprocess.STDOUT,
                    )
                )
                wait_for_health(f"http://127.0.0.1:{gw_port}", procs[-1], root / "gateway.log", timeout=60)
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "statuspanel", "serve", "--port", str(panel_port)]
                        + ["--gateway-url", gateway_url, "--log-level", "warning"],
                        env=env,
                        stdout=panel_log,
                        stderr=subprocess.STDOUT,
                    )
                )
                panel_base = f"http://127.0.0.1:{panel_port}"
                wait_for_health(panel_base, procs[-1], root / "panel.log", timeout=60)
                up = httpx2.post(
                    f"{panel_base}/api/v1/stacks/{project}/up",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=120,
                )
                if up.status_code != 200:
                    raise SystemExit(f"could not bring the bench stack up: {up.text[:500]}")
                samples = anyio.run(measure, gateway_url, panel_base, token, project, args.iterations, args.warmup)
        finally:
            for proc in reversed(procs):
                stop_process(proc)
            subprocess.run(
                ["docker", "compose", "-p", project, "down", "-v", "-t", "1"],
                cwd=stack_dir,
                capture_output=True,
                check=False,
            )

    gateway, panel = samples
    overhead_p50 = panel.p50 - gateway.p50
    overhead_p95 = panel.p95 - gateway.p95
    print(f"{'path':38} {'n':>5} {'p50 ms':>9} {'p95 ms':>9}")
    for sample in samples:
        print(f"{sample.name:38} {len(sample.values):5d} {sample.p50:9.2f} {sample.p95:9.2f}")
    print(f"{'panel overhead (panel - gateway)':38} {'':5} {overhead_p50:9.2f} {overhead_p95:9.2f}")
    verdict = "meets" if overhead_p50 < 5 else "MISSES"
    print(f"target: under 5 ms added at p50 -> {verdict} ({overhead_p50:.2f} ms); machine: {machine_context()}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "samples": [s.as_dict() for s in samples],
                    "overhead_ms": {"p50": round(overhead_p50, 3), "p95": round(overhead_p95, 3)},
                    "machine": machine_context(),
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
