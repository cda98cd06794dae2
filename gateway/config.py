"""Configuration, read once at the entry point into pydantic models.

Library code never reads ``os.environ``; entry points call :func:`load_settings` with the
environment and pass the result down. The environment wins over ``config.json``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, field_validator

from .auth.principals import DEPLOY_TOOLS
from .compose.process import Budget
from .engine.endpoint import parse_docker_host, parse_tls_verify
from .envparse import (
    NAME_PATTERN,
    TOKEN_SOURCE_ENV,
    CommonFields,
    check_name,
    default_state_dir,
    gather,
    parse_bool,
    settle,
)
from .hosts import HostConfig, check_hosts
from .policy.rules import Policy

__all__ = ["Settings", "load_settings", "parse_bool", "default_state_dir", "NAME_PATTERN", "check_name"]

logger = logging.getLogger(__name__)


class Settings(CommonFields):
    """Everything the gateway needs to know (the panel has its own: ``statuspanel.settings``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stacks_dir: Path = Path("stacks")
    audit_log: Path | None = None
    compose_bin: str | None = None
    docker_bin: str | None = Field(default=None, description="The docker CLI for swarm stacks; default: docker on PATH")
    docker_host: str | None = None
    # Docker's own TLS variables, for a tcp:// DOCKER_HOST (gateway/engine/endpoint.py reads them as the CLI does).
    docker_tls_verify: bool = False
    docker_cert_path: Path | None = None
    allowed_hosts: list[str] = Field(default_factory=list)
    self_project: str | None = Field(default=None, description="The compose project the gateway runs in, if known")
    docker_timeout: float = 10.0

    # Limits at the HTTP edge (gateway/ratelimit.py), per token, so that no caller starves another.
    max_sessions_per_token: int = Field(default=200, ge=1)
    session_idle_timeout: float = Field(default=300.0, gt=0)
    token_rate: float = Field(default=20.0, gt=0, description="Requests a second per token, on average")
    token_burst: int = Field(default=100, ge=1)
    shutdown_timeout: float = Field(default=8.0, ge=0, description="How long SIGTERM waits for running commands")

    # The HTTP edge (gateway/mcp/edge.py): what a caller without a token can hold, and for how long.
    max_connections: int = Field(
        default=1024, ge=1, description="Open connections, at most (less if descriptors are few)"
    )
    max_connections_per_peer: int = Field(default=32, ge=1, description="Connections one address holds before a token")
    header_timeout: float = Field(default=10.0, gt=0, description="Seconds a request's headers may take to arrive")
    body_timeout: float = Field(default=30.0, gt=0, description="Seconds a request's body may take to arrive")
    keep_alive_timeout: int = Field(default=5, ge=1, description="Seconds an idle keep-alive connection stays open")
    stream_idle_timeout: float = Field(
        default=300.0, gt=0, description="Seconds an SSE or GET stream may carry nothing"
    )
    engine_down_timeout: float = Field(
        default=120.0, gt=0, description="/health says 503 after the engine is down this long"
    )
    audit_reserve_mb: int = Field(
        default=64, ge=0, description="Free space on the audit's disk kept for mutation lines"
    )
    # Every Compose (and docker stack) run's budget (gateway/compose/process.py); 0 lifts a limit.
    compose_memory_mb: int = Field(default=2048, ge=0, description="Data segment of one Compose run, in MiB")
    compose_cpu_seconds: int = Field(default=300, ge=0, description="CPU time of one Compose run, in seconds")

    # More engines than the gateway's own, the host "local" (config.json only; see gateway/hosts.py).
    hosts: dict[str, HostConfig] = Field(default_factory=dict)

    # The policy guard (config.json only: no environment variable relaxes it).
    policy: Policy = Field(default_factory=Policy)
    # Tools of the deploy family the status panel's token may call too (config.json only).
    status_panel_tools: tuple[str, ...] = Field(
        default=(), description="deploy and/or rollback: grant them to the status panel's token"
    )

    # The gateway's public address (https://host[:port]): turns on the OAuth authorization server.
    public_url: str | None = Field(
        default=None, description="The URL clients reach the gateway at; OAuth is served only when it is set"
    )

    # Where people open the status panel: an approval request links to its page there.
    panel_url: str | None = Field(
        default=None, description="The status panel's address people open (https://panel.example.com)"
    )

    @field_validator("hosts")
    @classmethod
    def _host_names(cls, value: dict[str, HostConfig]) -> dict[str, HostConfig]:
        return check_hosts(value)

    @field_validator("panel_url")
    @classmethod
    def _panel_address(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value[:100]!r} is not an http(s) URL; give the address people open the panel at")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"{value[:100]!r} must be an address only, with no query, fragment or credentials")
        return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")

    @field_validator("status_panel_tools")
    @classmethod
    def _panel_grantable(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [tool for tool in value if tool not in DEPLOY_TOOLS]
        if unknown:
            raise ValueError(
                f"status_panel_tools may only name {', '.join(sorted(DEPLOY_TOOLS))}, not {', '.join(unknown)}"
            )
        return value

    @field_validator("public_url")
    @classmethod
    def _public_origin(cls, value: str | None) -> str | None:
        # It becomes the OAuth issuer: an origin, https unless this machine is the only client.
        if value is None:
            return None
        parts = urlsplit(value.strip())
        host = (parts.hostname or "").lower()
        loopback = host in ("127.0.0.1", "localhost", "::1")
        if parts.scheme not in ("http", "https") or not host:
            raise ValueError(
                f"{value!r} is not an http(s) URL; give the address clients use, e.g. https://gw.example.com"
            )
        if parts.scheme == "http" and not loopback:
            raise ValueError(
                f"{value!r} is plain http on a non-loopback host; OAuth needs https (put a TLS proxy in front, "
                "see docs/oauth.md)"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"{value!r} must be an origin only (scheme, host and port), with no path or query")
        return f"{parts.scheme}://{parts.netloc.lower()}"

    @property
    def compose_budget(self) -> Budget:
        """The memory and CPU budget of each Compose run (0 in a setting: no limit)."""
        return Budget(memory_mb=self.compose_memory_mb or None, cpu_seconds=self.compose_cpu_seconds or None)

    @property
    def audit_path(self) -> Path:
        return self.audit_log or self.state_dir / "audit.log"

    @field_validator("docker_host")
    @classmethod
    def _usable_docker_host(cls, value: str | None) -> str | None:
        if value is not None:
            parse_docker_host(value)
        return value

    @field_validator("docker_tls_verify", mode="before")
    @classmethod
    def _docker_tls_verify(cls, value: Any) -> Any:
        return parse_tls_verify(value) if isinstance(value, str) else value


# env var -> Settings field. Only these are read; everything else in the environment is ignored.
_ENV_FIELDS: dict[str, str] = {
    **TOKEN_SOURCE_ENV,
    "COMPOSE_AGENT_ENABLED": "compose_agent_enabled",
    "CONTROL_PLANE": "control_plane",
    "STACKS_DIR": "stacks_dir",
    "AUDIT_LOG": "audit_log",
    "COMPOSE_BIN": "compose_bin",
    "DOCKER_BIN": "docker_bin",
    "DOCKER_HOST": "docker_host",
    "DOCKER_TLS_VERIFY": "docker_tls_verify",
    "DOCKER_CERT_PATH": "docker_cert_path",
    "COMPOSE_AGENT_SELF_PROJECT": "self_project",
    "COMPOSE_AGENT_MAX_SESSIONS_PER_TOKEN": "max_sessions_per_token",
    "COMPOSE_AGENT_SESSION_IDLE_TIMEOUT": "session_idle_timeout",
    "COMPOSE_AGENT_TOKEN_RATE": "token_rate",
    "COMPOSE_AGENT_TOKEN_BURST": "token_burst",
    "COMPOSE_AGENT_SHUTDOWN_TIMEOUT": "shutdown_timeout",
    "COMPOSE_AGENT_PUBLIC_URL": "public_url",
    "COMPOSE_AGENT_MAX_CONNECTIONS": "max_connections",
    "COMPOSE_AGENT_MAX_CONNECTIONS_PER_PEER": "max_connections_per_peer",
    "COMPOSE_AGENT_HEADER_TIMEOUT": "header_timeout",
    "COMPOSE_AGENT_BODY_TIMEOUT": "body_timeout",
    "COMPOSE_AGENT_KEEP_ALIVE_TIMEOUT": "keep_alive_timeout",
    "COMPOSE_AGENT_STREAM_IDLE_TIMEOUT": "stream_idle_timeout",
    "COMPOSE_AGENT_ENGINE_DOWN_TIMEOUT": "engine_down_timeout",
    "COMPOSE_AGENT_AUDIT_RESERVE_MB": "audit_reserve_mb",
    "COMPOSE_AGENT_COMPOSE_MEMORY_MB": "compose_memory_mb",
    "COMPOSE_AGENT_COMPOSE_CPU_SECONDS": "compose_cpu_seconds",
    "COMPOSE_AGENT_PANEL_URL": "panel_url",
}
_FILE_FIELDS = {
    "compose_agent_enabled",
    "control_plane",
    "policy",
    "hosts",
    "status_panel_tools",
    "public_url",
    "panel_url",
}


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from ``config.json`` (``CONFIG_PATH``), then the environment, then ``overrides``.

    ``overrides`` are CLI flags; ``None`` values are ignored so an unset flag never masks the env.

    Raises:
        ConfigError: a malformed file or value, naming where it came from (the file, the env var or
            the CLI flag) and what is allowed. The offending value is not repeated, as it may be a secret.
    """
    env = dict(os.environ if environ is None else environ)
    values, origin = gather(env, _ENV_FIELDS, file_fields=_FILE_FIELDS, bools={"compose_agent_enabled"})
    for name, field in (
        ("COMPOSE_AGENT_FORWARDED_ALLOW_IPS", "forwarded_allow_ips"),
        ("COMPOSE_AGENT_ALLOWED_HOSTS", "allowed_hosts"),
    ):
        if env.get(name):
            values[field] = [item.strip() for item in env[name].split(",") if item.strip()]
            origin[field] = f"environment variable {name}"
    return settle(Settings, values, origin, overrides)
