"""``compose-agent serve``: build the gateway from settings and serve it over stdio or HTTP.

The composition root: settings, the audit, the operations, the MCP server and its transport are
put together here, and nowhere else.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import anyio

from .. import __version__
from ..audit import AuditLog
from ..auth.people import open_people
from ..auth.principals import STATUS_PANEL, TokenStore
from ..auth.tokens import (
    GeneratedTokenSource,
    TokenSource,
    load_initial_tokens,
    refresh_tokens_forever,
    share_panel_token,
    token_source_from_settings,
)
from ..compose.keeper import keeper
from ..compose.running import RunningCommands
from ..config import Settings, load_settings
from ..errors import AuditUnavailable, GatewayError
from ..fleet import Fleet
from ..mcp.app import LOOPBACK_HOSTS, BackgroundTask, Limits, Shutdown, build_http_app
from ..mcp.approvals import approval_gate
from ..mcp.health import supervise
from ..mcp.notify import Notifier
from ..mcp.oauth import build_oauth
from ..mcp.server import GatewayServer, build_server
from ..metrics import ControlPlane
from ..operations import ComposeOperations
from ..ratelimit import FailureLimiter, SessionCounter, TokenBucket
from .edge import EDGE_SETTINGS, connection_guard, uvicorn_edge, vitals_of
from .logfilter import RepeatFilter
from .upkeep import AUDIT_SUMMARY_INTERVAL_S, background_tasks, start_orphan_scan

__all__ = ["serve"]

logger = logging.getLogger("gateway")

# How long a stopping stdio server may wait for its stdin reader before it exits regardless.
_STDIO_EXIT_GRACE_S = 2.0


def _configure_logging(level: str) -> None:
    # Before MCPServer() exists: it would otherwise install its own handler. Always stderr: on stdio,
    # stdout is the protocol.
    logging.basicConfig(
        level=getattr(logging, level),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A flood (an attack, a failing dependency) must not fill the disk with the same lines.
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatFilter())
    for noisy in ("httpx", "httpx2", "mcp", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level)))


def _allowed_hosts(settings: Settings, host: str) -> list[str]:
    """The Host headers served: as configured, plus the public URL's host (clients come through it)."""
    hosts = list(settings.allowed_hosts)
    if not settings.public_url or hosts == ["*"]:
        return hosts
    if not hosts:
        hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
        if host not in LOOPBACK_HOSTS and host not in ("0.0.0.0", "::"):
            hosts.append(f"{host}:*")
    public = urlsplit(settings.public_url).netloc
    return hosts if public in hosts else [*hosts, public]


def _self_project(settings: Settings, ops: ComposeOperations) -> str | None:
    """The compose project this gateway runs in, from its own container's labels."""
    if settings.self_project:
        return settings.self_project
    if not Path("/.dockerenv").exists():
        return None
    return ops.engine.own_project(socket.gethostname())


def _own_command() -> str:
    """This console script's absolute path: a venv's bin folder is rarely on an MCP client's PATH."""
    beside_python = shutil.which("compose-agent", path=str(Path(sys.executable).parent))
    return str(Path(beside_python).absolute()) if beside_python else "compose-agent"


def _client_config(settings: Settings, args: argparse.Namespace, token: str) -> str:
    stacks = str(settings.stacks_dir.resolve())
    stdio = {
        "mcpServers": {
            "compose-agent": {
                "command": _own_command(),
                "args": ["serve", "--transport", "stdio", "--stacks-dir", stacks],
            }
        }
    }
    http = {
        "mcpServers": {
            "compose-agent": {
                "type": "http",
                "url": f"{'https' if args.tls_cert else 'http'}://{args.host}:{args.port}/mcp",
                "headers": {"Authorization": f"Bearer {token}"},
            }
        }
    }
    return (
        "MCP client configuration (stdio):\n"
        + json.dumps(stdio, indent=2)
        + "\nMCP client configuration (Streamable HTTP):\n"
        + json.dumps(http, indent=2)
    )


def _announce(settings: Settings, args: argparse.Namespace, source: TokenSource, store: TokenStore) -> None:
    """Tell the operator where to connect. Tokens are shown only right after they were generated."""
    base = f"{'https' if args.tls_cert else 'http'}://{args.host}:{args.port}"
    lines = [
        f"compose-agent {__version__}: stacks from {settings.stacks_dir.resolve()}",
        f"  Streamable HTTP  {base}/mcp",
        f"  SSE              {base}/sse",
        f"  health, metrics  {base}/health  {base}/api/v1/metrics  {base}/metrics",
    ]
    if settings.public_url:
        lines.append(f"  OAuth            {settings.public_url}/mcp (hosted clients sign in as one of the people)")
    token = "<your compose_agent_token>"
    if isinstance(source, GeneratedTokenSource):
        # Only a person at a terminal sees them: under a supervisor or in a container, stderr is a log
        # that outlives this moment, and tokens are never logged.
        if source.created and sys.stderr.isatty():
            tokens = source.tokens()
            token = tokens["compose_agent_token"]
            lines += [
                f"Generated tokens, saved in {source.path} (mode 0600); shown this once:",
                f"  compose_agent_token  {tokens['compose_agent_token']}",
                f"  status_panel_token   {tokens['status_panel_token']}",
            ]
        elif source.created:
            lines.append(f"Tokens: generated in {source.path} (mode 0600); not printed, since stderr is not a terminal")
        else:
            lines.append(f"Tokens: {source.path} (generated earlier; `cat` it to see them)")
    else:
        lines.append(f"Tokens: from {source.description}")
    lines.append(_client_config(settings, args, token))
    print("\n".join(lines), file=sys.stderr, flush=True)


async def _serve_http(
    settings: Settings, args: argparse.Namespace, ops: ComposeOperations, running: RunningCommands, fleet: Fleet
) -> int:
    import uvicorn

    from ..mcp.access import GatewayTokenVerifier

    store = TokenStore()
    source = token_source_from_settings(settings)
    await load_initial_tokens(source, store, timeout=settings.vault_startup_timeout)
    if args.host not in LOOPBACK_HOSTS and not store.configured:
        logger.error("refusing to listen on %s with no token configured", args.host)
        return 2
    if isinstance(source, GeneratedTokenSource):
        # The panel container reads its token from this folder alone, never the full-scope one.
        def share(current: TokenStore) -> None:
            try:
                share_panel_token(settings.state_dir, current.get(STATUS_PANEL.name))
            except OSError as exc:
                logger.warning("cannot share the status panel's token in %s: %s", settings.state_dir, exc)

        share(store)
        store.on_change(share)
    notifier = _notifier()
    static = GatewayTokenVerifier(store, panel_tools=settings.status_panel_tools)
    # People always (the panel logs them in); the authorization server with a public URL only.
    people = await open_people(settings, share=True)
    oauth = await build_oauth(settings, static=static, people=people) if settings.public_url else None
    approvals = approval_gate(settings)  # kept in the state folder, shared with a stdio gateway
    server = build_server(
        ops,
        read_only=args.read_only,
        token_verifier=oauth.verifier if oauth else static,
        issuer_url=oauth.issuer if oauth else f"http://{args.host}:{args.port}",
        resource_server_url=oauth.resource if oauth else None,
        people=people.scopes_of,
        notifier=notifier,
        confirm=settings.policy.confirm,
        approvals=approvals,
        state_dir=settings.state_dir,
        fleet=fleet,
    )

    async def refresh() -> None:
        await refresh_tokens_forever(source, store, interval=settings.vault_refresh_secs)

    def identify(token: str) -> str | None:
        principal = store.identify(token)
        if principal is None and oauth is not None:
            return oauth.identify(token)  # person@client: each their own rate and sessions
        return None if principal is None else principal.name

    limits = Limits(
        identify=identify,
        failures=FailureLimiter(),
        rate=TokenBucket(rate=settings.token_rate, burst=settings.token_burst),
        sessions=SessionCounter(limit=settings.max_sessions_per_token, idle_timeout=settings.session_idle_timeout),
    )
    guard = connection_guard(settings)
    vitals = vitals_of(settings, ops, guard, fleet)
    servers: list[uvicorn.Server] = []
    app = build_http_app(
        server,
        ops,
        host=args.host,
        allowed_hosts=_allowed_hosts(settings, args.host),
        background={
            "token refresh": refresh,
            "people": people.watch_forever,
            "approvals": approvals.watch_forever,
            **background_tasks(ops, notifier),
            **_task_runner(server),
            **{f"oauth {task.__name__}": task for task in (oauth.background if oauth else [])},
        },
        limits=limits,
        oauth_app=oauth.app if oauth else None,
        guard=oauth.guard(ops.audit_refusal) if oauth else None,
        # uvicorn owns SIGTERM and SIGINT; its public should_exit says when one arrived.
        shutdown=Shutdown(running, settings.shutdown_timeout, lambda: any(s.should_exit for s in servers)),
        vitals=vitals,
        stream_idle_timeout=settings.stream_idle_timeout,
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        server_header=False,
        **uvicorn_edge(settings, guard),
        # Explicit, whatever uvicorn's defaults or its FORWARDED_ALLOW_IPS variable say: a spoofed
        # X-Forwarded-For must not pick the address that failed logins are counted against.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or [],
        # A backstop only: the app's own drain waits for running commands and then ends the sessions.
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout) + 10,
        # uvicorn's own TLS, for a gateway that clients reach directly (docs/oauth.md).
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
    )
    uv = uvicorn.Server(config)
    servers.append(uv)
    _announce(settings, args, source, store)
    logger.info(
        "connections: at most %d open (of %d configured, within the descriptor limit), %d per peer before a token",
        guard.capacity(),
        settings.max_connections,
        settings.max_connections_per_peer,
    )
    try:
        await uv.serve()
    finally:
        if oauth is not None:
            oauth.close()
    return 0 if uv.started else 1


async def _serve_stdio(
    settings: Settings, args: argparse.Namespace, ops: ComposeOperations, running: RunningCommands, fleet: Fleet
) -> int:
    notifier = _notifier()
    approvals = approval_gate(settings)  # shared through the state folder with the HTTP gateway
    server = build_server(
        ops,
        read_only=args.read_only,
        notifier=notifier,
        confirm=settings.policy.confirm,
        approvals=approvals,
        state_dir=settings.state_dir,
        fleet=fleet,
    )
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            # Without this, SIGTERM ends the process mid-command with no outcome line.
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    logger.info("%s: stopping", signal.Signals(signum).name)
                    await running.drain(settings.shutdown_timeout)
                    tg.cancel_scope.cancel()
                    # The SDK reads stdin in a worker thread that no cancellation interrupts: while the
                    # client keeps the pipe open, nothing else would end this process. By now every
                    # command is stopped and its outcome is on disk (fsynced), so a last resort is safe.
                    exit_later = threading.Timer(_STDIO_EXIT_GRACE_S, os._exit, args=(0,))
                    exit_later.daemon = True
                    exit_later.start()
                    return

        tg.start_soon(stop_on_signal)
        for name, task in background_tasks(ops, notifier).items():
            tg.start_soon(supervise, name, task)
        tg.start_soon(supervise, "approvals", approvals.watch_forever)
        for name, run_tasks in _task_runner(server).items():
            tg.start_soon(supervise, name, run_tasks)
        await server.run_stdio_async()
        # The client hung up: a task it left running gets the same bounded wait as at SIGTERM.
        await running.drain(settings.shutdown_timeout)
        tg.cancel_scope.cancel()
    return 0


def _task_runner(server: GatewayServer) -> dict[str, BackgroundTask]:
    """Where the server's detached calls (tasks, keyed writes) run: beside it, for its lifetime."""
    return {"tasks": server.tasks.run} if server.tasks is not None else {}


def _notifier() -> Notifier:
    """The notifier hosts hear stack changes from; the gateway's warnings go to them too."""
    notifier = Notifier.in_memory()
    logging.getLogger("gateway").addHandler(notifier.handler)
    return notifier


# The numeric flags of `serve`, named as their settings.
_NUMERIC_FLAGS = ("max_sessions_per_token", "session_idle_timeout", "token_rate", "token_burst", "shutdown_timeout")


def serve(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    _configure_logging(args.log_level)
    if (args.tls_cert is None) != (args.tls_key is None):
        print("compose-agent: error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    for tls_file in (args.tls_cert, args.tls_key):
        if tls_file is not None and not os.access(tls_file, os.R_OK):
            print(f"compose-agent: error: cannot read {tls_file}", file=sys.stderr)
            return 2
    overrides: dict[str, object] = {"stacks_dir": args.stacks_dir, "compose_bin": args.compose_bin}
    overrides["public_url"] = args.public_url
    if args.allowed_hosts:
        overrides["allowed_hosts"] = [h.strip() for h in args.allowed_hosts.split(",") if h.strip()]
    if args.forwarded_allow_ips:
        overrides["forwarded_allow_ips"] = [ip.strip() for ip in args.forwarded_allow_ips.split(",") if ip.strip()]
    for name in (*_NUMERIC_FLAGS, *EDGE_SETTINGS):
        overrides[name] = getattr(args, name)
    settings = load_settings(environ, **overrides)
    if settings.control_plane is not ControlPlane.COMPOSE_AGENT:
        logger.warning(
            "CONTROL_PLANE=%s is ignored: the gateway's executions are compose_agent", settings.control_plane
        )
    start_orphan_scan()
    try:
        audit = AuditLog(
            settings.audit_path,
            reserve=settings.audit_reserve_mb * 1024 * 1024,
            summary_interval=AUDIT_SUMMARY_INTERVAL_S,
        )
        # Calls a crash or SIGKILL cut short get their outcome line before anything new runs.
        audit.recover()
    except AuditUnavailable as exc:
        # Without its audit the gateway must not mutate anything: say why once, and stop.
        print(f"compose-agent: error: {exc}", file=sys.stderr)
        return 2
    ops = ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, audit=audit, environ=environ)
    try:
        # The hosts of config.json beside the gateway's own engine; none is contacted here.
        fleet = Fleet.from_settings(settings, ops, plane=ControlPlane.COMPOSE_AGENT, audit=audit, environ=environ)
    except GatewayError:
        ops.close()
        raise
    try:
        ops.self_project = _self_project(settings, ops)
        if ops.self_project:
            logger.info("running in compose project %s: mutating tools will refuse it", ops.self_project)
        # Off the start-up path: finding and asking the CLI for its version takes ~50 ms.
        threading.Thread(target=ops.locate_cli, name="locate-compose", daemon=True).start()
        running = ops.lifecycle.running
        if args.transport == "stdio":
            return anyio.run(_serve_stdio, settings, args, ops, running, fleet)
        return anyio.run(_serve_http, settings, args, ops, running, fleet)
    finally:
        fleet.close()
        audit.close()
        keeper().close()
