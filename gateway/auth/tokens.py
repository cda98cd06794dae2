"""Where the gateway's accepted tokens come from, and how they are kept fresh.

Three sources, chosen by :func:`token_source_from_settings` in this order:

1. **Vault** (KV v2) when ``VAULT_ADDRESS`` is set; ``DEPLOYMENT_HASH`` is then required.
2. **The environment**, when ``COMPOSE_AGENT_TOKEN`` or ``STATUS_PANEL_TOKEN`` is set.
3. **The embedded default**: ``<state_dir>/tokens.json``, generated once (mode 0600).

:func:`load_initial_tokens` fills a :class:`~gateway.auth.principals.TokenStore` before the server listens,
and fails rather than start with no token. :func:`refresh_tokens_forever` re-reads the source so a
token rotated in Vault is accepted, and the old one refused, within one refresh interval.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Protocol

import anyio
import anyio.to_thread

from ..backoff import Backoff
from ..errors import ConfigError, GatewayError, VaultError
from .principals import TokenStore
from .vault import TOKEN_KEYS, SecretMissing, VaultClient, VaultSettings

__all__ = [
    "TOKEN_KEYS",
    "PANEL_SHARE_DIR",
    "share_panel_token",
    "TokenSource",
    "EnvTokenSource",
    "GeneratedTokenSource",
    "VaultTokenSource",
    "token_source_from_settings",
    "TokenSettings",
    "load_initial_tokens",
    "refresh_tokens_forever",
]

logger = logging.getLogger(__name__)

# The refresh wait is interval * (1 - U(0, JITTER)): spread out, but never longer than the interval.
JITTER = 0.2
TOKENS_FILE = "tokens.json"


class TokenSettings(VaultSettings, Protocol):
    """What picks a token source: Vault's settings, tokens given in the environment, the state dir."""

    @property
    def deployment_hash(self) -> str | None: ...
    @property
    def compose_agent_token(self) -> str | None: ...
    @property
    def status_panel_token(self) -> str | None: ...
    @property
    def state_dir(self) -> Path: ...


class TokenSource(Protocol):
    """Something that can say which tokens are valid right now."""

    #: Where the tokens come from, for logs and errors. Never holds a token.
    description: str

    async def fetch(self) -> dict[str, str]:
        """The current tokens keyed by ``compose_agent_token`` / ``status_panel_token``; only keys that exist.

        Raises:
            VaultError: Vault could not be read (worth retrying).
            ConfigError: the source is misconfigured (not worth retrying).
        """
        ...


class EnvTokenSource:
    """Tokens given in ``COMPOSE_AGENT_TOKEN`` / ``STATUS_PANEL_TOKEN`` (read once into Settings)."""

    description = "the environment (COMPOSE_AGENT_TOKEN, STATUS_PANEL_TOKEN)"

    def __init__(self, compose_agent_token: str | None = None, status_panel_token: str | None = None) -> None:
        self._tokens = {
            key: value
            for key, value in (("compose_agent_token", compose_agent_token), ("status_panel_token", status_panel_token))
            if value
        }

    async def fetch(self) -> dict[str, str]:
        if not self._tokens:
            raise ConfigError("neither COMPOSE_AGENT_TOKEN nor STATUS_PANEL_TOKEN is set")
        return dict(self._tokens)


class GeneratedTokenSource:
    """The embedded default: both tokens in ``<state_dir>/tokens.json``, generated on first use.

    The directory is made 0700 and the file 0600. The file is generated only by the first
    :meth:`fetch` of this process (``created`` is then True, so the CLI can print the tokens
    once); later fetches re-read it, so editing the file rotates the tokens without a restart.
    A file deleted mid-run is not silently regenerated: the last good tokens stay in force.
    """

    def __init__(self, state_dir: Path, *, create: bool = True) -> None:
        self.path = Path(state_dir) / TOKENS_FILE
        self.description = f"the generated token file {self.path}"
        self.created = False
        # A reader (the status panel) never generates: a token only it knew would let no one in.
        self._first = create

    async def fetch(self) -> dict[str, str]:
        may_create, self._first = self._first, False
        return await anyio.to_thread.run_sync(self._load, may_create)

    def tokens(self) -> dict[str, str]:
        """The tokens in the file, read synchronously (for printing them once at start)."""
        return self._load(False)

    def _load(self, may_create: bool) -> dict[str, str]:
        try:
            if may_create and not self.path.exists():
                self._generate()
            return self._read()
        except OSError as exc:
            raise ConfigError(f"cannot use the token file {self.path}: {exc.strerror or exc}") from exc

    def _generate(self) -> None:
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(directory.stat().st_mode) & 0o077:
            os.chmod(directory, 0o700)
        tokens = {key: secrets.token_urlsafe(32) for key in TOKEN_KEYS}
        # If another process won the race, keep its tokens rather than overwrite them.
        if not write_private_json(self.path, tokens, replace=False):
            return
        self.created = True
        logger.info("generated new tokens in %s", self.path)

    def _read(self) -> dict[str, str]:
        mode = stat.S_IMODE(self.path.stat().st_mode)
        if mode & 0o077:
            # Someone loosened it; the tokens are root-equivalent, so close it again and say so.
            os.chmod(self.path, 0o600)
            logger.warning("token file %s was mode %o; set it back to 0600", self.path, mode)
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"the token file {self.path} is not valid JSON (line {exc.lineno}, column {exc.colno});"
                " fix it or delete it to generate new tokens"
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"the token file {self.path} must hold a JSON object")
        unknown = sorted(set(data) - set(TOKEN_KEYS))
        if unknown:
            raise ConfigError(f"the token file {self.path} has unknown key(s) {', '.join(unknown)}")
        tokens = {key: value for key, value in data.items() if isinstance(value, str) and value}
        if len(tokens) != len(data):
            raise ConfigError(f"every value in the token file {self.path} must be a non-empty string")
        if not tokens:
            raise ConfigError(f"the token file {self.path} holds no token; delete it to generate new tokens")
        return tokens


def write_private_json(path: Path, data: dict[str, str], *, replace: bool) -> bool:
    """Write ``data`` as JSON to ``path``, mode 0600, atomically: a reader never sees half a file.

    The file is written and synced under a temporary name beside ``path``, then renamed over it
    (``replace``) or linked into place only if ``path`` does not exist yet. Returns False when it
    did not replace an existing file.
    """
    fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=path.parent)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


# Beside the state dir's own token file: a folder holding only the status panel's token, for a
# panel that must not read the gateway's full-scope token (the deployment mounts just this folder).
PANEL_SHARE_DIR = "panel"


def share_panel_token(state_dir: Path, token: str | None) -> Path:
    """Write ``<state_dir>/panel/tokens.json`` holding only ``status_panel_token`` (0600, atomically).

    With no token the file is removed, so a revoked token is not left behind for the panel.
    """
    directory = Path(state_dir) / PANEL_SHARE_DIR
    path = directory / TOKENS_FILE
    if not token:
        path.unlink(missing_ok=True)
        return path
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private_json(path, {"status_panel_token": token}, replace=True)
    return path


class VaultTokenSource:
    """Both tokens from Vault: ``secret/{prefix}/{deployment_hash}/{compose_agent_token,status_panel_token}``.

    A key whose secret does not exist is left out (deleting a secret in Vault revokes that
    token at the next refresh). Any other failure raises, so a half-read never replaces a good set.
    """

    def __init__(self, client: VaultClient, deployment_hash: str, keys: tuple[str, ...] = TOKEN_KEYS) -> None:
        self.client = client
        self.deployment_hash = deployment_hash
        self.keys = keys
        self.description = client.describe(deployment_hash, keys)

    async def fetch(self) -> dict[str, str]:
        tokens: dict[str, str] = {}
        missing: list[str] = []
        for key in self.keys:
            try:
                tokens[key] = await self.client.fetch_agent_token(self.deployment_hash, key)
            except SecretMissing:
                missing.append(self.client.path(self.deployment_hash, key))
        if not tokens:
            raise VaultError(f"no token stored in Vault at {self.client.address}: {', '.join(missing)} are all missing")
        return tokens


def token_source_from_settings(settings: TokenSettings) -> TokenSource:
    """Vault if ``vault_address`` is set, else the environment's tokens, else the generated file.

    Raises:
        ConfigError: Vault is configured without ``DEPLOYMENT_HASH`` or ``VAULT_TOKEN``.
    """
    if settings.vault_address:
        if not settings.deployment_hash:
            raise ConfigError(
                f"VAULT_ADDRESS is set ({settings.vault_address}) but DEPLOYMENT_HASH is not;"
                " it names the folder of this deployment's tokens in Vault"
            )
        return VaultTokenSource(VaultClient.from_settings(settings), settings.deployment_hash)
    if settings.compose_agent_token or settings.status_panel_token:
        return EnvTokenSource(settings.compose_agent_token, settings.status_panel_token)
    return GeneratedTokenSource(settings.state_dir)


async def load_initial_tokens(source: TokenSource, store: TokenStore, *, timeout: float) -> None:
    """Fill ``store`` from ``source`` before the server accepts a connection.

    Retries with exponential backoff until at least one token is loaded. A ConfigError is not
    retried. The gateway never starts open: if no token can be had, this raises.

    Raises:
        VaultError: Vault gave no token within ``timeout`` seconds; the message names its address.
        ConfigError: the source is misconfigured, or (for a non-Vault source) gave no token in time.
    """
    backoff = Backoff(min(0.25, timeout / 10), 5.0)
    attempts = 0
    last: Exception | None = None
    with anyio.move_on_after(timeout):
        while True:
            attempts += 1
            try:
                tokens = await source.fetch()
            except ConfigError:
                raise
            except GatewayError as exc:
                last = exc
                logger.info("no tokens yet from %s (attempt %d): %s", source.description, attempts, exc)
            else:
                if tokens:
                    store.replace(tokens)
                    logger.info("loaded %s from %s", ", ".join(sorted(tokens)), source.description)
                    return
                last = None
            await anyio.sleep(backoff.next())
    reason = f": {last}" if last is not None else " (no answer, or an empty one)"
    message = f"no token from {source.description} within {timeout:g}s after {attempts} attempt(s){reason}"
    if isinstance(last, VaultError) or isinstance(source, VaultTokenSource):
        raise VaultError(message)
    raise ConfigError(message)


async def refresh_tokens_forever(source: TokenSource, store: TokenStore, *, interval: float) -> None:
    """Re-read ``source`` every ``interval`` seconds (less a random jitter of up to 20%) until cancelled.

    A changed set replaces the store's tokens at once, so a rotated token is accepted and the old
    one refused within one interval. On failure (of the read, or of what a change sets off, such as
    sharing the panel's token on a full disk) the last good tokens stay in force, a WARNING is
    logged (never with a token in it), and the read is retried with backoff capped at ``interval``.
    Nothing it meets ends it: it must not take the server's task group down.
    """
    backoff = Backoff(min(1.0, interval / 4), interval)
    retry: float | None = None
    while True:
        await anyio.sleep(retry if retry is not None else interval * (1 - random.uniform(0, JITTER)))
        try:
            tokens = await source.fetch()
            if not tokens:
                # Closing the gateway to everyone is never what a refresh should do by accident.
                raise VaultError(f"{source.description} returned no token")
            changed = _changed_keys(store, tokens)
            if changed:
                store.replace(tokens)
        except Exception as exc:  # noqa: BLE001 - a refresh failure must never take the server down
            retry = backoff.next()
            logger.warning(
                "could not refresh tokens from %s (failure %d in a row), keeping the last good tokens;"
                " retrying in %.1fs: %s",
                source.description,
                backoff.failures,
                retry,
                exc if isinstance(exc, GatewayError) else type(exc).__name__,
            )
            continue
        if backoff.failures:
            logger.info("token refresh from %s works again after %d failure(s)", source.description, backoff.failures)
            backoff.reset()
            retry = None
        if changed:
            logger.info("tokens changed in %s: %s; the old ones are refused from now on", source.description, changed)


def _changed_keys(store: TokenStore, tokens: dict[str, str]) -> str:
    """The keys whose token differs from the store's, asked of the store itself (it hands no token out)."""
    changed = set(store.keys()) ^ set(tokens)
    for key, value in tokens.items():
        principal = store.identify(value)
        if principal is None or principal.name != key:
            changed.add(key)
    return ", ".join(sorted(changed))
