"""``status-panel serve``: read the configuration once, pick the backend, run uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Mapping, Sequence

import anyio

from gateway.api import (
    STATUS_PANEL,
    ControlPlane,
    EnvTokenSource,
    GatewayError,
    GeneratedTokenSource,
    TokenSource,
    TokenStore,
    install_log_redaction,
    load_initial_tokens,
    open_people,
    refresh_tokens_forever,
    token_source_from_settings,
)

from . import __version__
from .backend import Backend, GatewayBackend
from .client import GatewayClient
from .credentials import Authenticator
from .hosts import LOOPBACK_HOSTS, AllowedHosts
from .legacy import LegacyBackend
from .settings import ALLOWED_HOSTS_ENV, PanelSettings, load_panel_settings

__all__ = ["main", "build_backend", "is_loopback", "allowed_hosts", "control_plane"]

logger = logging.getLogger("statuspanel")

LEGACY_WARNING = "compose_agent=false - running in legacy mode"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(settings: PanelSettings, listen_host: str) -> AllowedHosts:
    """``STATUS_PANEL_ALLOWED_HOSTS`` if set; else, on loopback, the loopback names; else any host.

    Off loopback a token is required, and operators reach the panel by whatever IP or name they
    have, so any ``Host`` is accepted unless the variable narrows it.

    Raises:
        ValueError: the variable holds something that is not a host name.
    """
    raw = settings.allowed_hosts or ""
    if raw.strip():
        return AllowedHosts.parse(raw)
    if is_loopback(listen_host):
        return AllowedHosts([*LOOPBACK_HOSTS, listen_host])
    return AllowedHosts(["*"])


def control_plane(settings: PanelSettings) -> ControlPlane:
    """The plane that runs the panel's commands: the mode decides it, not ``CONTROL_PLANE``.

    The plane names who ran a command in the metrics and the audit; a setting that could disagree
    with the mode would make them lie. ``CONTROL_PLANE`` is still validated (an unknown value stops
    the panel), and one that disagrees with the mode is reported once as ignored.
    """
    plane = ControlPlane.COMPOSE_AGENT if settings.compose_agent_enabled else ControlPlane.STATUS_PANEL
    if "control_plane" in settings.model_fields_set and settings.control_plane is not plane:
        logger.warning(
            "CONTROL_PLANE=%s is ignored: with compose_agent_enabled=%s the commands are run by %s",
            settings.control_plane.value,
            str(settings.compose_agent_enabled).lower(),
            plane.value,
        )
    return plane


def panel_token_source(settings: PanelSettings) -> tuple[TokenSource, TokenStore]:
    """Where the panel's own token comes from: the same sources, in the same order, as the gateway's.

    Vault (``status_panel_token`` under the deployment's path), else ``STATUS_PANEL_TOKEN``, else the
    token file the gateway generated, when both use one state dir. The panel never generates one.
    """
    source = token_source_from_settings(settings)
    if isinstance(source, GeneratedTokenSource):
        source = GeneratedTokenSource(settings.state_dir, create=False)
    return source, TokenStore()


def build_backend(settings: PanelSettings, environ: Mapping[str, str], token: str | None = None) -> Backend:
    """The gateway proxy, or (``compose_agent_enabled`` false) the operations in this process.

    Legacy mode reads the gateway's own settings from ``environ`` (stacks dir, policy, audit log).

    Raises:
        GatewayError: legacy mode's settings are malformed.
    """
    if settings.compose_agent_enabled:
        return GatewayBackend(GatewayClient(settings.compose_agent_url, token or settings.status_panel_token))
    logger.warning(LEGACY_WARNING)
    # Imported only here: normal mode must run without docker-py touching a socket.
    from gateway.api import AuditLog, ComposeOperations, load_settings

    gateway_settings = load_settings(environ)
    audit = AuditLog(gateway_settings.audit_path)
    operations = ComposeOperations.from_settings(
        gateway_settings, plane=ControlPlane.STATUS_PANEL, audit=audit, environ=environ
    )
    return LegacyBackend(operations, audit=audit)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="status-panel", description="Web UI and JSON API for compose stacks.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the panel over HTTP")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=5001, help="port to listen on (default 5001)")
    serve.add_argument("--gateway-url", default=None, help="the compose-agent's MCP URL (overrides COMPOSE_AGENT_URL)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--forwarded-allow-ips",
        default=None,
        metavar="IPS",
        help="trust X-Forwarded-For/-Proto only from these proxy addresses (comma-separated, or *); "
        "off by default, so failed logins are counted per connecting address",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Legacy mode resolves stacks' secrets in this process: none reaches the panel's log (gateway.redact).
    install_log_redaction()
    # httpx2 logs every request at INFO: one line per proxied call would drown the panel's own log.
    logging.getLogger("httpx2").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        # Only the flag names trusted proxies: the gateway's COMPOSE_AGENT_FORWARDED_ALLOW_IPS is not the panel's.
        proxies = [ip.strip() for ip in (args.forwarded_allow_ips or "").split(",") if ip.strip()]
        settings = load_panel_settings(os.environ, compose_agent_url=args.gateway_url, forwarded_allow_ips=proxies)
    except GatewayError as exc:
        logger.error("%s", exc)
        return 2
    plane = control_plane(settings)
    try:
        hosts = allowed_hosts(settings, args.host)
    except ValueError as exc:
        logger.error("%s: %s", ALLOWED_HOSTS_ENV, exc)
        return 2
    source, store = panel_token_source(settings)
    refreshing = not isinstance(source, EnvTokenSource)
    try:
        if isinstance(source, EnvTokenSource) and not settings.status_panel_token:
            pass  # only the gateway's own token is in the environment: the panel has none
        elif isinstance(source, GeneratedTokenSource) and not source.path.exists():
            pass  # no gateway has generated tokens in this state dir: the panel has none
        else:
            anyio.run(lambda: load_initial_tokens(source, store, timeout=settings.vault_startup_timeout))
    except GatewayError as exc:
        logger.error("no status panel token: %s", exc)
        return 2
    token = store.get(STATUS_PANEL.name)
    if not token and not is_loopback(args.host):
        logger.error(
            "refusing to listen on %s without STATUS_PANEL_TOKEN: set a token, or listen on 127.0.0.1", args.host
        )
        return 2
    logger.info("status panel token from %s", source.description if token else "nowhere (open on loopback)")
    try:
        # The gateway's people: its state dir (or the copy it shares with this panel), or Vault.
        people = anyio.run(open_people, settings)
    except GatewayError as exc:
        logger.error("cannot use the people: %s", exc)
        return 2
    authenticator = Authenticator(token, settings.panel_username, settings.panel_password, people)
    if authenticator.open:
        logger.warning("no STATUS_PANEL_TOKEN and no login configured: anyone on this machine can use the panel")
    try:
        backend = build_backend(settings, os.environ, token)
    except GatewayError as exc:
        logger.error("cannot start legacy mode: %s", exc)
        return 2

    import uvicorn

    from .app import create_app

    def rotate(current: TokenStore) -> None:
        # A rotated token is accepted from callers, and presented to the gateway, at once.
        new = current.get(STATUS_PANEL.name)
        authenticator.set_token(new)
        if isinstance(backend, GatewayBackend):
            backend.client.set_token(new)

    store.on_change(rotate)

    async def refresh() -> None:
        await refresh_tokens_forever(source, store, interval=settings.vault_refresh_secs)

    app = create_app(
        backend,
        authenticator,
        watchdog_url=settings.watchdog_url,
        session_secret=settings.session_secret,
        allowed_hosts=hosts,
        https_only=settings.https_only,
        background=([refresh] if refreshing and token else []) + [people.watch_forever],
    )
    logger.info(
        "status panel %s on http://%s:%d (%s; control plane %s)",
        __version__,
        args.host,
        args.port,
        "legacy mode" if backend.legacy else f"compose-agent at {settings.compose_agent_url}",
        plane.value,
    )
    logger.info("answering to hosts: %s", hosts)
    if settings.forwarded_allow_ips:
        logger.info("trusting proxy headers from %s", ", ".join(settings.forwarded_allow_ips))
    # Passed explicitly: uvicorn's default trusts X-Forwarded-For from 127.0.0.1 (or $FORWARDED_ALLOW_IPS),
    # and a spoofed address would dodge the login limit, or lock out an address of the sender's choice.
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        lifespan="on",
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
