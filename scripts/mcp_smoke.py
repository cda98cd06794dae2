"""A new user's first MCP session against `bash scripts/run.sh`, with the project's own Python client.

Used by scripts/fresh-machine-check.sh inside a fresh container, from the project's venv:

    .venv/bin/python scripts/mcp_smoke.py --url http://127.0.0.1:8765 --state .state --run-log run.log

Over Streamable HTTP with the saved token: ``list_stacks`` shows the example stack, ``up`` brings it
up, ``ps`` shows its services running. Then the stdio configuration that the gateway printed is used
as pasted, with a bare PATH (no venv on it), and lists the stacks too. Exits non-zero with the reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import stat
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

STACK = "hello"
STDIO_BANNER = "MCP client configuration (stdio):"
# What an MCP client such as Claude Desktop passes to the servers it starts: not the user's shell PATH.
BARE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


logger = logging.getLogger("mcp-smoke")


class SmokeFailed(Exception):
    """The first session did not go as the README promises."""


def _structured(result: Any, tool: str) -> dict[str, Any]:
    if result.is_error or not isinstance(result.structured_content, dict):
        text = " ".join(getattr(block, "text", "") for block in result.content)
        raise SmokeFailed(f"{tool} failed: {text}")
    return dict(result.structured_content)


def _token(state: Path) -> str:
    path = state / "tokens.json"
    if not path.is_file():
        raise SmokeFailed(f"no tokens saved at {path}")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode != 0o600:
        raise SmokeFailed(f"{path} has mode {mode:o}, not 600")
    return str(json.loads(path.read_text())["compose_agent_token"])


def _printed_stdio_config(run_log: Path) -> dict[str, Any]:
    text = run_log.read_text(errors="replace")
    start = text.find(STDIO_BANNER)
    if start < 0:
        raise SmokeFailed(f"the gateway printed no stdio configuration in {run_log}")
    config, _ = json.JSONDecoder().raw_decode(text, start + len(STDIO_BANNER) + 1)
    server = dict(config["mcpServers"]["compose-agent"])
    if not Path(server["command"]).is_absolute():
        raise SmokeFailed(f"the printed stdio command is not an absolute path: {server['command']}")
    return server


async def _over_http(url: str, token: str) -> None:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
        async with Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
            stacks = _structured(await client.call_tool("list_stacks", {}), "list_stacks")["stacks"]
            names = sorted(s["name"] for s in stacks)
            if STACK not in names:
                raise SmokeFailed(f"list_stacks does not show {STACK!r}: {names}")
            logger.info("HTTP: list_stacks shows %s", names)
            _structured(await client.call_tool("up", {"project": STACK}), "up")
            services = _structured(await client.call_tool("ps", {"project": STACK}), "ps")["services"]
            states = {s["service"]: s["state"] for s in services}
            if set(states.values()) != {"running"}:
                raise SmokeFailed(f"after up, ps shows {states}")
            logger.info("HTTP: up %s, then ps shows %s", STACK, states)


async def _over_pasted_stdio(server: dict[str, Any], state: Path) -> None:
    params = StdioServerParameters(
        command=server["command"],
        args=list(server["args"]),
        env={"PATH": BARE_PATH, "HOME": str(Path.home()), "COMPOSE_AGENT_STATE_DIR": str(state / "stdio")},
    )
    async with Client(params) as client:
        stacks = _structured(await client.call_tool("list_stacks", {}), "list_stacks")["stacks"]
    names = sorted(s["name"] for s in stacks)
    if STACK not in names:
        raise SmokeFailed(f"over the pasted stdio configuration, list_stacks does not show {STACK!r}: {names}")
    logger.info("stdio, as pasted (%s): list_stacks shows %s", server["command"], names)


async def _main(args: argparse.Namespace) -> None:
    with anyio.fail_after(args.timeout):
        await _over_http(args.url, _token(args.state))
        await _over_pasted_stdio(_printed_stdio_config(args.run_log), args.state)


def main() -> int:
    """Run the session; 0 when every step went as the README promises."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8765", help="the gateway's base URL")
    parser.add_argument("--state", type=Path, default=Path(".state"), help="the state dir holding tokens.json")
    parser.add_argument("--run-log", type=Path, required=True, help="what scripts/run.sh printed")
    parser.add_argument("--timeout", type=float, default=300, help="seconds for the whole session")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[mcp-smoke] %(message)s")
    for noisy in ("httpx", "httpx2", "mcp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        anyio.run(_main, args)
    except (SmokeFailed, TimeoutError, OSError, KeyError, ValueError) as exc:
        logger.error("FAILED: %s: %s", type(exc).__name__, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
