"""Reading values from the environment: the boolean grammar, safe path segments, the state dir.

Shared by every entry point (the gateway's and the panel's settings) without loading either.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError
from .metrics import ControlPlane

__all__ = [
    "NAME_PATTERN",
    "TOKEN_SOURCE_ENV",
    "TokenSourceFields",
    "CommonFields",
    "check_name",
    "default_state_dir",
    "gather",
    "parse_bool",
    "settle",
]

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

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


class TokenSourceFields(BaseModel):
    """Where tokens come from: Vault (KV v2), tokens given in the environment, or the state dir.

    The gateway's settings and the panel's share these fields and their checks.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    state_dir: Path = Path("/tmp/compose-agent")
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


class CommonFields(TokenSourceFields):
    """What the gateway's settings and the panel's share: the seed's switches, proxies, token sources."""

    # The seed's switches (config.json or env).
    compose_agent_enabled: bool = True
    control_plane: ControlPlane = ControlPlane.COMPOSE_AGENT

    forwarded_allow_ips: list[str] = Field(
        default_factory=list, description="Proxies whose X-Forwarded-For is believed; none by default"
    )

    @field_validator("control_plane", mode="before")
    @classmethod
    def _known_plane(cls, value: Any) -> Any:
        allowed = [p.value for p in ControlPlane]
        if isinstance(value, str) and value not in allowed:
            raise ValueError(f"unknown control_plane {value!r}; allowed values: {', '.join(allowed)}")
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


# env var -> field of TokenSourceFields.
TOKEN_SOURCE_ENV: dict[str, str] = {
    "COMPOSE_AGENT_TOKEN": "compose_agent_token",
    "STATUS_PANEL_TOKEN": "status_panel_token",
    "VAULT_ADDRESS": "vault_address",
    "VAULT_TOKEN": "vault_token",
    "VAULT_AGENT_PATH_PREFIX": "vault_agent_path_prefix",
    "VAULT_TOKEN_KEY": "vault_token_key",
    "VAULT_REFRESH_SECS": "vault_refresh_secs",
    "VAULT_STARTUP_TIMEOUT": "vault_startup_timeout",
    "DEPLOYMENT_HASH": "deployment_hash",
}


def _read_config_file(path: Path, known: Collection[str], *, strict: bool) -> dict[str, Any]:
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
    unknown = sorted(set(data) - set(known))
    if unknown and strict:
        raise ConfigError(f"{path}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return {key: value for key, value in data.items() if key in known}


def gather(
    environ: Mapping[str, str],
    env_fields: Mapping[str, str],
    *,
    file_fields: Collection[str] = (),
    bools: Collection[str] = (),
    strict_file: bool = True,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Values for a settings model from ``config.json`` (``CONFIG_PATH``), then the environment.

    Returns the values and, for each field, where its value came from (for errors). Only the names
    in ``env_fields`` are read; ``bools`` are parsed with :func:`parse_bool`. With ``strict_file``,
    a field in the file outside ``file_fields`` is an error; without, it is someone else's and ignored.

    Raises:
        ConfigError: the file cannot be read or parsed, or a boolean is malformed.
    """
    values: dict[str, Any] = {"state_dir": default_state_dir(environ)}
    origin: dict[str, str] = {}
    config_path = Path(environ.get("CONFIG_PATH", "config.json"))
    if "CONFIG_PATH" in environ and not config_path.exists():
        # Optional by design (images point it at a mount that may not be there), but a typo should show.
        logger.info("CONFIG_PATH=%s does not exist; using the environment and defaults", config_path)
    for field, value in _read_config_file(config_path, file_fields, strict=strict_file).items():
        values[field] = value
        origin[field] = str(config_path)
    for name, field in env_fields.items():
        raw = environ.get(name)
        if raw is None or raw == "":
            continue
        values[field] = parse_bool(name, raw) if field in bools else raw
        origin[field] = f"environment variable {name}"
    return values, origin


def settle(model: type[M], values: dict[str, Any], origin: dict[str, str], overrides: Mapping[str, Any]) -> M:
    """``model`` from ``values`` and the command line's ``overrides`` (``None`` ones ignored).

    Raises:
        ConfigError: naming each bad field, where its value came from and what is allowed. The
            offending value is not repeated, as it may be a secret.
    """
    for field, value in overrides.items():
        if value is not None:
            values[field] = value
            origin[field] = "command line"
    try:
        return model(**values)
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
