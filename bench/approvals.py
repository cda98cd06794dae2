"""What approvals cost: each step in the store, a host's look at them, and a waiting call end to end.

    python bench/approvals.py [--iterations 200] [--json out.json]

In this process, on a file in a temporary state folder (written whole, fsynced, under a lock, as
the gateway keeps them): filing a request, deciding it and spending it; the ``stat`` a watcher
makes every second; and listing 200 approvals for a caller. Then, against a real
``compose-agent serve`` whose policy makes ``restart`` wait, over Streamable HTTP: a ``restart``
answered with ``approval_required`` (its plan, the request filed and audited) beside a ``ps`` of
the same stack. The stack is a folder with no containers: nothing is created on the engine.
Prints a Markdown table.
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

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402 - a script beside its helpers
    Sample,
    free_port,
    run_and_report,
    stop_process,
    time_async_calls,
    time_calls,
    wait_for_health,
)
from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from gateway.approvals.records import Approver, Request  # noqa: E402
from gateway.approvals.store import ApprovalStore  # noqa: E402
from gateway.auth.principals import LOCAL  # noqa: E402
from gateway.mcp.approvals import ApprovalGate  # noqa: E402
from gateway.policy.rules import Policy  # noqa: E402

BOB = Approver("bob", "oauth:bench")


def request(n: int) -> Request:
    project = f"bench{n % 50}"
    return Request("down", project, {"project": project}, secrets.token_hex(32), f"caller{n}", None, "state", "plan")


async def in_process(args: argparse.Namespace, state: Path) -> list[Sample]:
    store = ApprovalStore(state / "approvals.json")
    ids: list[str] = []
    counter = iter(range(10**9))

    def file_one() -> None:
        ids.append(store.request(request(next(counter)))[0].id)

    samples = [time_calls("file a request", file_one, iterations=args.iterations)]
    pending = iter(list(ids))
    samples.append(
        time_calls("approve it", lambda: store.decide(next(pending), approve=True, by=BOB), iterations=len(ids))
    )
    spent = iter(list(enumerate(ids)))

    def spend() -> None:
        n, approval = next(spent)
        found = store.get(approval)
        assert found is not None
        store.redeem(approval, tool="down", call=found.call, caller=f"caller{n}", on_behalf_of=None, state="state")

    samples.append(time_calls("spend it (the retry)", spend, iterations=len(ids)))
    samples.append(time_calls("a watcher's look (stat, µs)", store.stamp, iterations=2000))
    samples[-1].values = [v * 1000 for v in samples[-1].values]
    gate = ApprovalGate(store, Policy())
    await gate.visible(LOCAL)  # read once; a listing reads the file again only when it changed
    samples.append(
        await time_async_calls(
            f"list {len(ids)} approvals for a caller", lambda: gate.visible(LOCAL), iterations=args.iterations
        )
    )
    return samples


async def served(args: argparse.Namespace, state: Path, stacks: Path) -> list[Sample]:
    (stacks / "benchwait").mkdir(parents=True)
    (stacks / "benchwait" / "compose.yaml").write_text("services:\n  app:\n    image: busybox\n")
    config = state / "config.json"
    config.write_text(json.dumps({"policy": {"approve": ["restart"]}}))
    port = free_port()
    token = secrets.token_urlsafe(24)
    env = {**os.environ, "COMPOSE_AGENT_TOKEN": token, "COMPOSE_AGENT_STATE_DIR": str(state)}
    env.update(CONFIG_PATH=str(config), COMPOSE_AGENT_TOKEN_RATE="100000")  # calls, not the rate limit
    argv = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--stacks-dir", str(stacks)]
    log = state / "gateway.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    samples: list[Sample] = []
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_health(base, process, log)
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            async with Client(streamable_http_client(f"{base}/mcp", http_client=http), mode="legacy") as client:
                arguments = {"project": "benchwait"}
                samples.append(
                    await time_async_calls(
                        "ps over HTTP", lambda: client.call_tool("ps", arguments), iterations=args.iterations, warmup=5
                    )
                )
                n = iter(range(10**9))

                async def waiting() -> None:
                    # Another service list each time: a new request, not the one already waiting.
                    result = await client.call_tool("restart", {**arguments, "services": [f"s{next(n)}"]})
                    assert result.is_error and (result.meta or {}).get("compose-agent/error") == "approval_required"

                # At most 20 wait per caller: the bench files that many, as a busy agent would.
                samples.append(
                    await time_async_calls("restart answered approval_required over HTTP", waiting, iterations=20)
                )
    finally:
        stop_process(process)
    return samples


async def main(args: argparse.Namespace) -> list[Sample]:
    with tempfile.TemporaryDirectory(prefix="approvals-bench-") as tmp:
        state, stacks = Path(tmp) / "state", Path(tmp) / "stacks"
        state.mkdir()
        samples = await in_process(args, state / "in-process")
        return samples + await served(args, state, stacks)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None, help="also write the samples here")
    return parser.parse_args()


if __name__ == "__main__":
    run_and_report(main, parse_args())
