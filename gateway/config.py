"""Configuration, read once at the entry point into pydantic models.

Library code never reads ``os.environ``; entry points call :func:`load_settings` with the
environment and pass the result down. The environment wins over ``config.json``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .auth.principals import DEPLOY_TOOLS
from .errors import ConfigError
from .metrics import ControlPlane
from .policy.rules import Policy

__all__ = ["Settings", "load_settings", "parse_bool", "default_state_dir", "NAME_PATTERN", "check_name"]

logger = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

# One segment of a Vault path (deployment hash, token key, prefix part): no "/", so no traversal.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_name(kind: str, value: str) -> str:
    """``value`` if it is safe as one Vault path segment, else ``ValueError`` naming ``kind``.

    The characters are ``A-Za-z0-9_.-``; names made only of dots (``.``, ``..``) are refused too.
    """
    if not NAME_PATTERN.fullmatch(value) or set(value) == {"."}:
        raise ValueError(f"{kind} {value!r} is not allowed; use letters, digits, '_', '.' and '-' (not only dots)")
    return value


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """Where generated tokens and the audit log live when nothing else is configured."""
    if "COMPOSE_AGENT_STATE_DIR" in environ:
        return Path(environ["COMPOSE_AGENT_STATE_DIR"])
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "/tmp")) / ".local" / "state")
    return Path(base) / "compose-agent"


class Settings(BaseModel):
    """Everything the three entry points of the gateway and the panel need to know."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The seed's switches (config.json or env).
    compose_agent_enabled: bool = True
    control_plane: ControlPlane = ControlPlane.COMPOSE_AGENT

    stacks_dir: Path = Path("stacks")
    state_dir: Path = Path("/tmp/compose-agent")
    audit_log: Path | None = None
    compose_bin: str | None = None
    docker_bin: str | None = Field(default=None, description="The docker CLI for swarm stacks; default: docker on PATH")
    docker_host: str | None = None
    allowed_hosts: list[str] = Field(default_factory=list)
    self_project: str | None = Field(default=None, description="The compose project the gateway runs in, if known")
    docker_timeout: float = 10.0

    # Limits at the HTTP edge (gateway/ratelimit.py), per token, so that no caller starves another.
    forwarded_allow_ips: list[str] = Field(
        default_factory=list, description="Proxies whose X-Forwarded-For is believed; none by default"
    )
    max_sessions_per_token: int = Field(default=200, ge=1)
    session_idle_timeout: float = Field(default=300.0, gt=0)
    token_rate: float = Field(default=20.0, gt=0, description="Requests a second per token, on average")
    token_burst: int = Field(default=100, ge=1)
    shutdown_timeout: float = Field(default=8.0, ge=0, description="How long SIGTERM waits for running commands")

    # Tokens without Vault.
    compose_agent_token: str | None = Field(default=None, repr=False)
    status_panel_token: str | None = Field(default=None, repr=False)

    # Vault (KV v2).
    vault_address: str | None = None
    vault_token: str | None = Field(default=None, repr=False)
    vault_agent_path_prefix: str = "agent"
    vault_token_key: str | None = None
    vault_refresh_secs: float = Field(default=60.0, gt=0)
    vault_startup_timeout: float = Field(default=30.0, gt=0)
    deployment_hash: str | None = None

    # The policy guard (config.json only: no environment variable relaxes it).
    policy: Policy = Field(default_factory=Policy)
    # Tools of the deploy family the status panel's token may call too (config.json only).
    status_panel_tools: tuple[str, ...] = Field(
        default=(), description="deploy and/or rollback: grant them to the status panel's token"
    )

    # The status panel.
    compose_agent_url: str = "http://127.0.0.1:8765/mcp"
    watchdog_url: str | None = None
    panel_username: str | None = None
    panel_password: str | None = Field(default=None, repr=False)
    session_secret: str | None = Field(default=None, repr=False)

    @field_validator("control_plane", mode="before")
    @classmethod
    def _known_plane(cls, value: Any) -> Any:
        allowed = [p.value for p in ControlPlane]
        if isinstance(value, str) and value not in allowed:
            raise ValueError(f"unknown control_plane {value!r}; allowed values: {', '.join(allowed)}")
        return value

    @field_validator("status_panel_tools")
    @classmethod
    def _panel_grantable(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [tool for tool in value if tool not in DEPLOY_TOOLS]
        if unknown:
            raise ValueError(
                f"status_panel_tools may only name {', '.join(sorted(DEPLOY_TOOLS))}, not {', '.join(unknown)}"
            )
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (e.g. 10.0.0.5, 172.18.0.0/16, *)"
                ) from None
        return value

    @field_validator("vault_address")
    @classmethod
    def _vault_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("deployment_hash")
    @classmethod
    def _safe_hash(cls, value: str | None) -> str | None:
        return None if value is None else check_name("deployment hash", value)

    @field_validator("vault_token_key")
    @classmethod
    def _safe_key(cls, value: str | None) -> str | None:
        return None if value is None else check_name("token key", value)

    @field_validator("vault_agent_path_prefix")
    @classmethod
    def _safe_prefix(cls, value: str) -> str:
        # A prefix may have several segments ("teams/agent"), each as safe as a single name.
        for part in value.strip("/").split("/"):
            check_name("path prefix segment", part)
        return value.strip("/")

    @property
    def audit_path(self) -> Path:
        return self.audit_log or self.state_dir / "audit.log"


# env var -> Settings field. Only these are read; everything else in the environment is ignored.
_ENV_FIELDS: dict[str, str] = {
    "COMPOSE_AGENT_ENABLED": "compose_agent_enabled",
    "CONTROL_PLANE": "control_plane",
    "STACKS_DIR": "stacks_dir",
    "AUDIT_LOG": "audit_log",
    "COMPOSE_BIN": "compose_bin",
    "DOCKER_BIN": "docker_bin",
    "DOCKER_HOST": "docker_host",
    "COMPOSE_AGENT_SELF_PROJECT": "self_project",
    "COMPOSE_AGENT_TOKEN": "compose_agent_token",
    "STATUS_PANEL_TOKEN": "status_panel_token",
    "VAULT_ADDRESS": "vault_address",
    "VAULT_TOKEN": "vault_token",
    "VAULT_AGENT_PATH_PREFIX": "vault_agent_path_prefix",
    "VAULT_TOKEN_KEY": "vault_token_key",
    "VAULT_REFRESH_SECS": "vault_refresh_secs",
    "VAULT_STARTUP_TIMEOUT": "vault_startup_timeout",
    "DEPLOYMENT_HASH": "deployment_hash",
    "COMPOSE_AGENT_URL": "compose_agent_url",
    "WATCHDOG_URL": "watchdog_url",
    "STATUS_PANEL_USERNAME": "panel_username",
    "STATUS_PANEL_PASSWORD": "panel_password",
    "STATUS_PANEL_SESSION_SECRET": "session_secret",
    "COMPOSE_AGENT_MAX_SESSIONS_PER_TOKEN": "max_sessions_per_token",
    "COMPOSE_AGENT_SESSION_IDLE_TIMEOUT": "session_idle_timeout",
    "COMPOSE_AGENT_TOKEN_RATE": "token_rate",
    "COMPOSE_AGENT_TOKEN_BURST": "token_burst",
    "COMPOSE_AGENT_SHUTDOWN_TIMEOUT": "shutdown_timeout",
}
_FILE_FIELDS = {"compose_agent_enabled", "control_plane", "policy", "status_panel_tools"}


def parse_bool(name: str, raw: str) -> bool:
    """A boolean setting: true/false, 1/0, yes/no, on/off, in any case.

    Raises:
        ConfigError: anything else, naming the setting.
    """
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use true or false")


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, not {type(data).__name__}")
    unknown = sorted(set(data) - _FILE_FIELDS)
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FILE_FIELDS))}")
    return data


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from ``config.json`` (``CONFIG_PATH``), then the environment, then ``overrides``.

    ``overrides`` are CLI flags; ``None`` values are ignored so an unset flag never masks the env.

    Raises:
        ConfigError: a malformed file or value, naming where it came from (the file, the env var or
            the CLI flag) and what is allowed. The offending value is not repeated, as it may be a secret.
    """
    env = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {"state_dir": default_state_dir(env)}
    # field -> where its value came from, so an error points at the thing to fix.
    origin: dict[str, str] = {}
    config_path = Path(env.get("CONFIG_PATH", "config.json"))
    if "CONFIG_PATH" in env and not config_path.exists():
        # Optional by design (images point it at a mount that may not be there), but a typo should show.
        logger.info("CONFIG_PATH=%s does not exist; using the environment and defaults", config_path)
    for field, value in _read_config_file(config_path).items():
        values[field] = value
        origin[field] = str(config_path)
    for name, field in _ENV_FIELDS.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        values[field] = parse_bool(name, raw) if field == "compose_agent_enabled" else raw
        origin[field] = f"environment variable {name}"
    if env.get("COMPOSE_AGENT_FORWARDED_ALLOW_IPS"):
        raw_ips = env["COMPOSE_AGENT_FORWARDED_ALLOW_IPS"]
        values["forwarded_allow_ips"] = [ip.strip() for ip in raw_ips.split(",") if ip.strip()]
        origin["forwarded_allow_ips"] = "environment variable COMPOSE_AGENT_FORWARDED_ALLOW_IPS"
    if env.get("COMPOSE_AGENT_ALLOWED_HOSTS"):
        values["allowed_hosts"] = [h.strip() for h in env["COMPOSE_AGENT_ALLOWED_HOSTS"].split(",") if h.strip()]
        origin["allowed_hosts"] = "environment variable COMPOSE_AGENT_ALLOWED_HOSTS"
    for field, value in overrides.items():
        if value is not None:
            values[field] = value
            origin[field] = "command line"
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            where = origin.get(field, "defaults")
            msg = err["msg"].removeprefix("Value error, ")
            # The whole location, so a nested policy error points at its key (policy.stacks.shop.allow).
            key = ".".join(str(part) for part in err["loc"])
            problems.append(f"{key} (from {where}): {msg}")
        # "from None": pydantic's own text repeats input values, and one of them may be a token.
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
