"""``compose-agent``: the command line. It parses, hands off, and is the only place that exits.

``serve`` (see :mod:`gateway.cli.serve`), ``vault`` (see :mod:`gateway.cli.vault`) and ``users``
(see :mod:`gateway.cli.users`) are its commands. The environment is read here, once, and handed down.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..errors import GatewayError
from ..redact import install_log_redaction
from .edge import add_edge_flags
from .serve import serve
from .users import add_parser as add_users_parser
from .users import run as run_users_command
from .vault import add_vault_parser, run_vault_command

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compose-agent",
        description="An MCP gateway that lets AI agents run Docker Compose stacks safely.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{serve,vault,users}")

    serve = commands.add_parser(
        "serve",
        help="serve the MCP tools over stdio, or over HTTP (Streamable HTTP at /mcp, SSE at /sse)",
        description=(
            "Serve the compose tools (list_stacks, ps, logs, config, plan, versions, up, down, restart, "
            "start, stop, deploy, rollback). "
            "HTTP needs a bearer token: from Vault (VAULT_ADDRESS), from COMPOSE_AGENT_TOKEN / "
            "STATUS_PANEL_TOKEN, or generated on first start and saved under the state dir."
        ),
    )
    serve.add_argument("--transport", choices=["stdio", "http"], default="http", help="default: http")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="HTTP port (default: 8765)")
    serve.add_argument("--stacks-dir", type=Path, help="folder of stack folders (default: $STACKS_DIR or ./stacks)")
    serve.add_argument(
        "--read-only",
        action="store_true",
        help="offer only the read tools (list_stacks, ps, logs, config, plan, versions)",
    )
    serve.add_argument("--compose-bin", help="Compose v2 CLI to run (default: $COMPOSE_BIN, then auto-detect)")
    serve.add_argument(
        "--allowed-hosts",
        help="comma-separated Host headers to accept, e.g. 'compose-agent:*,localhost:*' "
        "(default: $COMPOSE_AGENT_ALLOWED_HOSTS, else loopback names)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        help="comma-separated proxy addresses or networks whose X-Forwarded-For/-Proto is believed "
        "(default: $COMPOSE_AGENT_FORWARDED_ALLOW_IPS, else none: the peer address is the client)",
    )
    serve.add_argument(
        "--max-sessions-per-token",
        type=int,
        help="open MCP sessions allowed per token (default: $COMPOSE_AGENT_MAX_SESSIONS_PER_TOKEN, else 200)",
    )
    serve.add_argument(
        "--session-idle-timeout",
        type=float,
        help="seconds after which an idle MCP session is closed "
        "(default: $COMPOSE_AGENT_SESSION_IDLE_TIMEOUT, else 300)",
    )
    serve.add_argument(
        "--token-rate",
        type=float,
        help="HTTP requests a second allowed per token, on average (default: $COMPOSE_AGENT_TOKEN_RATE, else 20)",
    )
    serve.add_argument(
        "--token-burst",
        type=int,
        help="requests a token may send at once above its rate (default: $COMPOSE_AGENT_TOKEN_BURST, else 100)",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        help="seconds SIGTERM waits for running compose commands before ending them "
        "(default: $COMPOSE_AGENT_SHUTDOWN_TIMEOUT, else 8)",
    )
    # OAuth for hosted clients, and HTTPS from the gateway itself (docs/oauth.md).
    serve.add_argument(
        "--public-url",
        help="the https:// address clients reach this gateway at; turns on OAuth for hosted clients "
        "(default: $COMPOSE_AGENT_PUBLIC_URL, or public_url in config.json; see docs/oauth.md)",
    )
    serve.add_argument(
        "--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this certificate (chain) file; needs --tls-key"
    )
    serve.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert")
    add_edge_flags(serve)
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_vault_parser(commands)
    add_users_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    environ = dict(os.environ)
    try:
        if args.command == "vault":
            return run_vault_command(args, environ)
        if args.command == "users":
            return run_users_command(args, environ)
        install_log_redaction()  # no secret resolved from Vault reaches any log handler (gateway.redact)
        return serve(args, environ)
    except GatewayError as exc:
        print(f"compose-agent: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
