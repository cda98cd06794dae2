"""The gateway's limits under load, put together from settings: flags, the connection guard, /health's
vitals and uvicorn's options (see :mod:`gateway.mcp.edge` and :mod:`gateway.mcp.health`)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from ..config import Settings
from ..fleet import Fleet
from ..mcp.edge import ACCEPT_BACKLOG, ConnectionGuard, EdgeLimits, trusted_networks
from ..mcp.health import Vitals
from ..mcp.protocol import edge_protocol
from ..operations import ComposeOperations
from .logfilter import AcceptFailures

__all__ = ["EDGE_FLAGS", "EDGE_SETTINGS", "add_edge_flags", "connection_guard", "vitals_of", "uvicorn_edge"]

# A request head larger than this is refused with 400 (h11's own default, made explicit).
MAX_HEAD_BYTES = 16 * 1024

# (flag, type, environment variable, default, what it is): the edge, the audit's disk, Compose's budget.
EDGE_FLAGS: tuple[tuple[str, type, str, str, str], ...] = (
    (
        "--max-connections",
        int,
        "MAX_CONNECTIONS",
        "1024",
        "open HTTP connections, at most (fewer if the "
        "descriptor limit is low: it keeps 128 descriptors for everything else)",
    ),
    (
        "--max-connections-per-peer",
        int,
        "MAX_CONNECTIONS_PER_PEER",
        "32",
        "connections one address may hold "
        "before it presents a valid token (loopback and Unix sockets count as one address)",
    ),
    ("--header-timeout", float, "HEADER_TIMEOUT", "10", "seconds a request's headers may take to arrive"),
    ("--body-timeout", float, "BODY_TIMEOUT", "30", "seconds a request's body may take to arrive"),
    ("--keep-alive-timeout", int, "KEEP_ALIVE_TIMEOUT", "5", "seconds an idle keep-alive connection stays open"),
    (
        "--stream-idle-timeout",
        float,
        "STREAM_IDLE_TIMEOUT",
        "300",
        "seconds an SSE or Streamable HTTP GET stream may carry nothing before it is closed",
    ),
    (
        "--engine-down-timeout",
        float,
        "ENGINE_DOWN_TIMEOUT",
        "120",
        "seconds the Docker engine may not answer before /health says 503",
    ),
    (
        "--audit-reserve-mb",
        int,
        "AUDIT_RESERVE_MB",
        "64",
        "MiB of the audit log's disk kept for intent and outcome lines: refusals are not written below it",
    ),
    (
        "--compose-memory-mb",
        int,
        "COMPOSE_MEMORY_MB",
        "2048",
        "MiB of memory (data segment) one Compose run may use; 0: no limit",
    ),
    ("--compose-cpu-seconds", int, "COMPOSE_CPU_SECONDS", "300", "seconds of CPU one Compose run may use; 0: no limit"),
)


def add_edge_flags(serve: argparse.ArgumentParser) -> None:
    """The limits' flags of ``serve``, in a group of their own."""
    edge = serve.add_argument_group("limits that keep the gateway up under load (see docs/security.md)")
    for flag, kind, env, default, text in EDGE_FLAGS:
        edge.add_argument(flag, type=kind, help=f"{text} (default: $COMPOSE_AGENT_{env}, else {default})")


# The settings those flags set, by name (a flag's dest is its setting's name).
EDGE_SETTINGS = tuple(flag[0].removeprefix("--").replace("-", "_") for flag in EDGE_FLAGS)


def connection_guard(settings: Settings) -> ConnectionGuard:
    """The guard of the HTTP edge, with the settings' caps and timeouts."""
    return ConnectionGuard(
        EdgeLimits(
            max_connections=settings.max_connections,
            max_per_peer=settings.max_connections_per_peer,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            trusted=trusted_networks(settings.forwarded_allow_ips or []),
        )
    )


def vitals_of(settings: Settings, ops: ComposeOperations, guard: ConnectionGuard, fleet: Fleet | None = None) -> Vitals:
    """What /health looks at: the engine, the audit's disk, the guard's connections, the other hosts."""
    return Vitals(
        ops.engine.ping,
        engine_down_timeout=settings.engine_down_timeout,
        audit=ops.audit,
        connections=lambda: guard.open,
        engine_state=lambda: ops.engine.state.as_dict(),
        hosts=fleet.states if fleet is not None and len(fleet) > 1 else None,
    )


def uvicorn_edge(settings: Settings, guard: ConnectionGuard) -> dict[str, Any]:
    """uvicorn's options for the edge; call on the loop that will serve (it takes its exception handler)."""
    # Out of descriptors, asyncio reports each failed accept() with a traceback: one line an interval instead.
    asyncio.get_running_loop().set_exception_handler(AcceptFailures())
    return {
        # uvicorn's loggers go through the gateway's one handler (and its RepeatFilter), not their own.
        "log_config": None,
        # The connection edge: caps, header and body timeouts (see gateway.mcp.edge).
        "http": edge_protocol(guard),
        "backlog": ACCEPT_BACKLOG,
        # No route speaks WebSocket: an upgrade must not hand a connection to a protocol outside the edge.
        "ws": "none",
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "timeout_keep_alive": settings.keep_alive_timeout,
    }
