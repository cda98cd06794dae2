"""Secrets by reference: a stack names them in its compose file, the gateway reads them from Vault at ``up``.

A stack writes, in the gateway's extension block::

    x-compose-agent:
      secrets:
        DB_PASSWORD: "secret/stacks/shop#db"     # KV v2: mount, path inside it, and a key

How a value reaches the containers without ever being written to disk by the gateway:

1. The policy guard runs ``docker compose config`` with each name set to a *placeholder* of its own
   (:func:`placeholders`), so the judged model shows where every ``${DB_PASSWORD}`` went.
2. :func:`bind` allows a placeholder only in a service's ``environment`` values, and turns it back
   into ``${DB_PASSWORD}``: the judged model (and the run file written from it) holds the reference,
   never the value. Compose's own ``secrets: {db: {environment: DB_PASSWORD}}`` names the variable
   and needs nothing. Anywhere else (a command, a label, a path) is refused: it would put a secret
   where the guard's judgement of the value matters, or where every ``ps`` shows it.
3. At ``up`` (and ``deploy``, ``rollback``, ``plan``) :mod:`gateway.auth.stacksecrets` reads the
   values and hands them to Compose as environment variables of its process, and nowhere else.
4. Each service that uses a secret gets the label :data:`DIGEST_LABEL`: a keyed hash (HMAC) of each
   value it uses, never the value. A changed secret changes the label, so Compose's config hash
   changes, ``plan`` shows the service recreated, and ``up`` recreates it.

Every value read is added to the :data:`~gateway.redact.REDACTOR` before anything else happens.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets as stdlib_secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidInput, SecretUnavailable

__all__ = [
    "DIGEST_LABEL",
    "EXTENSION_KEY",
    "MIN_SECRET_LENGTH",
    "SECRETS_KEY_FILE",
    "Reference",
    "SecretUnavailable",
    "bind",
    "bound",
    "changed_secrets",
    "check_names",
    "declared",
    "digest",
    "parse_block",
    "placeholders",
    "with_digests",
]

EXTENSION_KEY = "x-compose-agent"
DIGEST_LABEL = "com.compose-agent.secrets"
# In the state dir: the key of the digests, so they compare across restarts and between gateways.
SECRETS_KEY_FILE = "secrets.key"
# A shorter value would redact ordinary words from every log ("admin", "secret", "1234").
MIN_SECRET_LENGTH = 8
MAX_SECRETS = 64
# An environment variable name as shells and Compose write them; upper case, so it reads as one.
_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
# mount/path#key: segments start with a letter or digit (so no "." or ".." segment, no hidden name),
# no "%", no "//", nothing Vault's router or hvac's URL building could read another way.
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
_REFERENCE = re.compile(rf"(?P<mount>{_SEGMENT})/(?P<path>{_SEGMENT}(?:/{_SEGMENT}){{0,15}})#(?P<key>{_SEGMENT})")
# Names that steer the programs the gateway runs (Compose, the docker CLI, ssh, the Go runtime, the
# dynamic loader) or that every environment has: a secret must not replace them.
_RESERVED = frozenset(
    {
        "PATH", "HOME", "USER", "SHELL", "PWD", "TMPDIR", "TMP", "TEMP", "LANG", "TZ", "TERM", "HOSTNAME",
        "IFS", "ENV", "BASH_ENV", "CDPATH", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
        "FTP_PROXY", "GODEBUG", "GOGC", "GOMAXPROCS", "GOMEMLIMIT", "GOTRACEBACK", "GOFLAGS",
    }
)  # fmt: skip
_RESERVED_PREFIXES = ("COMPOSE_", "DOCKER_", "BUILDKIT_", "BUILDX_", "LD_", "SSH_", "SSL_", "XDG_", "LC_",
                      "VAULT_", "STATUS_PANEL_", "OTEL_", "GIT_")  # fmt: skip
_HELP = (
    f'write it as `{EXTENSION_KEY}: {{secrets: {{DB_PASSWORD: "secret/stacks/shop#db"}}}}`: an upper-case variable '
    "name, and a KV v2 reference mount/path#key (letters, digits, _ . -; segments start with a letter or digit)"
)


@dataclass(frozen=True)
class Reference:
    """Where a secret lives: KV v2 ``mount``, ``path`` inside it, and ``key`` in its data."""

    mount: str
    path: str
    key: str

    def __str__(self) -> str:
        return f"{self.mount}/{self.path}#{self.key}"


def check_names(names: Any) -> tuple[str, ...]:
    """The secret names, each a safe environment variable name the gateway's tools do not use.

    Raises:
        InvalidInput: a name that is not upper case, or that steers a program the gateway runs.
    """
    checked = []
    for name in names:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidInput(f"{EXTENSION_KEY}.secrets: {str(name)[:70]!r} is not a variable name; {_HELP}")
        if name in _RESERVED or name.startswith(_RESERVED_PREFIXES):
            raise InvalidInput(
                f"{EXTENSION_KEY}.secrets: {name} would replace a variable that Compose, the docker CLI or "
                "the system reads (PATH, HOME, COMPOSE_*, DOCKER_*, ...); give the secret another name"
            )
        checked.append(name)
    if len(checked) > MAX_SECRETS:
        raise InvalidInput(f"{EXTENSION_KEY}.secrets names {len(checked)} secrets; at most {MAX_SECRETS}")
    return tuple(checked)


def parse_block(block: Any) -> dict[str, Reference]:
    """The ``secrets`` of an ``x-compose-agent`` block (the block's other keys are not looked at).

    Raises:
        InvalidInput: a malformed block, name or reference, saying how to write it.
    """
    if not isinstance(block, Mapping):
        return {}
    secrets = block.get("secrets")
    if secrets is None:
        return {}
    if not isinstance(secrets, Mapping):
        raise InvalidInput(f"{EXTENSION_KEY}.secrets must be a mapping of names to references; {_HELP}")
    references = {}
    for name in check_names(secrets):
        value = secrets[name]
        match = _REFERENCE.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            shown = str(value)[:80] if isinstance(value, str) else type(value).__name__
            raise InvalidInput(f"{EXTENSION_KEY}.secrets.{name}: {shown!r} is not a reference; {_HELP}")
        references[name] = Reference(match["mount"], match["path"], match["key"])
    return references


def declared(model: Mapping[str, Any]) -> dict[str, Reference]:
    """The secrets a judged model references (see :func:`parse_block`).

    Raises:
        InvalidInput: a malformed block.
    """
    return parse_block(model.get(EXTENSION_KEY))


def placeholders(names: tuple[str, ...]) -> dict[str, str]:
    """A value for each name while the guard judges (name -> placeholder), unlike any text a file holds."""
    nonce = stdlib_secrets.token_hex(8)
    return {name: f"compose-agent:secret:{name}:{nonce}" for name in names}


def bind(model: dict[str, Any], stand_ins: Mapping[str, str]) -> dict[str, Any]:
    """The judged model with each placeholder of ``stand_ins`` (name -> placeholder) turned back into
    ``${NAME}``, which Compose interpolates from its process environment at ``up``.

    Raises:
        InvalidInput: a secret used anywhere but a service's ``environment`` values.
    """
    if not stand_ins:
        return model
    by_placeholder = {value: name for name, value in stand_ins.items()}
    pattern = re.compile("|".join(re.escape(p) for p in by_placeholder))
    misplaced: list[str] = []

    def walk(value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, str):
            if not pattern.search(value):
                return value
            if len(path) == 4 and path[0] == "services" and path[2] == "environment":
                return pattern.sub(lambda m: "${" + by_placeholder[m.group()] + "}", value)
            used = sorted({by_placeholder[m] for m in pattern.findall(value)})
            misplaced.append(f"{'.'.join(path)} ({', '.join(used)})")
            return value
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if isinstance(key, str) and pattern.search(key):
                    misplaced.append(".".join((*path, "<key>")))
                out[key] = walk(item, (*path, str(key)))
            return out
        if isinstance(value, list):
            return [walk(item, path) for item in value]
        return value

    bound: dict[str, Any] = walk(model, ())
    if misplaced:
        raise InvalidInput(
            "a secret from Vault is used at " + "; ".join(misplaced[:5])
            + ". A secret may be used only as a service's environment value (`environment: {DB_PASSWORD: "
            "${DB_PASSWORD}}`) or as a Compose secret's source (`secrets: {db: {environment: DB_PASSWORD}}`); "
            "in a command, label or path it would be judged and shown as plain text"
        )  # fmt: skip
    return bound


def bound(model: dict[str, Any], stand_ins: Mapping[str, str]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The judged model with its placeholders bound (:func:`bind`), and the names of the secrets it
    references (:func:`declared`).

    Raises:
        InvalidInput: a secret used anywhere but a service's ``environment`` values, or a malformed
            ``x-compose-agent.secrets`` block.
    """
    model = bind(model, stand_ins)
    return model, tuple(declared(model))


def _uses(model: Mapping[str, Any], names: set[str]) -> dict[str, list[str]]:
    """Which secrets each service uses: in its environment, or through a Compose secret sourced from one."""
    sourced = {}
    for secret_name, spec in (model.get("secrets") or {}).items():
        if isinstance(spec, Mapping) and spec.get("environment") in names:
            sourced[str(secret_name)] = str(spec["environment"])
    uses: dict[str, list[str]] = {}
    for service, spec in (model.get("services") or {}).items():
        if not isinstance(spec, Mapping):
            continue
        used = set()
        for value in (spec.get("environment") or {}).values():
            if isinstance(value, str):
                used |= {name for name in names if "${" + name + "}" in value}
        for attached in spec.get("secrets") or []:
            source = attached.get("source") if isinstance(attached, Mapping) else attached
            if source in sourced:
                used.add(sourced[source])
        if used:
            uses[str(service)] = sorted(used)
    return uses


def with_digests(model: Mapping[str, Any], values: Mapping[str, str], key: bytes) -> dict[str, Any]:
    """The model Compose runs: each service that uses a secret labelled with :data:`DIGEST_LABEL`
    (``NAME:hmac,...``, a keyed hash of each value it uses), so a changed value recreates it."""
    uses = _uses(model, set(values))
    if not uses:
        return dict(model)
    services = dict(model.get("services") or {})
    for service, names in uses.items():
        spec = dict(services[service])
        labels = dict(spec.get("labels") or {})
        labels[DIGEST_LABEL] = ",".join(f"{name}:{digest(key, name, values[name])}" for name in names)
        spec["labels"] = labels
        services[service] = spec
    return {**model, "services": services}


def digest(key: bytes, name: str, value: str) -> str:
    """A keyed hash of one secret's value: changes when the value does, tells nothing about it."""
    return hmac.new(key, f"{name}\0{value}".encode(), hashlib.sha256).hexdigest()[:16]


def changed_secrets(old_label: str | None, new_label: str | None) -> list[str]:
    """The secrets whose digest differs between a container's label and the one ``up`` would set."""

    def parse(label: str | None) -> dict[str, str]:
        pairs = (item.partition(":") for item in (label or "").split(",") if item)
        return {name: value for name, _, value in pairs}

    old, new = parse(old_label), parse(new_label)
    return sorted(name for name in set(old) | set(new) if old.get(name) != new.get(name))
