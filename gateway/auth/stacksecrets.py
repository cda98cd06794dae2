"""A stack's secrets read from Vault, each value added to the redactor before anything else sees it.

What a reference is, where a secret may be used and how Compose gets it: :mod:`gateway.secretrefs`.
This module reads the values (through :class:`~gateway.auth.vault.VaultClient`), refuses those that
cannot be secrets, and keeps the key of the digests that make a rotation visible to ``plan``.
"""

from __future__ import annotations

import logging
import os
import secrets as stdlib_secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread

from ..errors import ConfigError, SecretUnavailable, VaultError
from ..redact import REDACTOR, Redactor
from ..secretrefs import MIN_SECRET_LENGTH, Reference, declared, with_digests

__all__ = ["SecretReader", "StackSecrets"]

logger = logging.getLogger(__name__)

MAX_SECRET_LENGTH = 64 * 1024


class SecretReader(Protocol):
    """Reads the fields of a KV v2 secret (:meth:`gateway.auth.vault.VaultClient.read_fields`)."""

    address: str
    mount: str  # where the gateway's own documents live: mount/path_prefix/...
    path_prefix: str

    async def read_fields(self, mount: str, path: str) -> dict[str, Any]: ...


class StackSecrets:
    """Resolves a stack's references from Vault, adding every value to the redactor as it is read.

    ``reader`` makes the Vault client on first use (None: no Vault configured); ``key_file`` keeps the
    key of the digests, so they stay comparable across restarts.
    """

    def __init__(self, reader: Any = None, *, key_file: Path | None = None, redactor: Redactor = REDACTOR) -> None:
        self._make_reader = reader
        self._reader: SecretReader | None = None
        self.key_file = key_file
        self.redactor = redactor
        self._key: bytes | None = None

    def key(self) -> bytes:
        """The digests' key: read from ``key_file``, or made there (0600) the first time. Blocking."""
        if self._key is not None:
            return self._key
        key = None
        if self.key_file is not None:
            try:
                key = _load_key(self.key_file)
            except OSError as exc:
                logger.warning("cannot keep the secrets' digest key in %s (%s)", self.key_file, exc)
        self._key = key or stdlib_secrets.token_bytes(32)
        return self._key

    def _vault(self, project: str, references: Mapping[str, Reference]) -> SecretReader:
        if self._reader is None:
            listed = ", ".join(f"{name} ({ref})" for name, ref in references.items())
            if self._make_reader is None:
                raise SecretUnavailable(
                    f"stack '{project}' references secrets in Vault ({listed}), but this gateway has no Vault "
                    "configured: set VAULT_ADDRESS and VAULT_TOKEN (see docs/secrets.md); nothing was started"
                )
            try:
                self._reader = self._make_reader()
            except ConfigError as exc:
                raise SecretUnavailable(
                    f"stack '{project}' references secrets in Vault ({listed}), but Vault cannot be used: {exc}"
                ) from None
        assert self._reader is not None
        return self._reader

    async def prepare(self, project: str, model: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """The model Compose runs (with :func:`with_digests` labels) and the values for its environment.

        Raises:
            SecretUnavailable: as :meth:`resolve`.
            InvalidInput: a malformed ``x-compose-agent.secrets`` block.
        """
        references = declared(model)
        if not references:
            return model, {}
        values = await self.resolve(project, references)
        key = await anyio.to_thread.run_sync(self.key)
        return with_digests(model, values, key), values

    async def for_action(self, project: str, model: Mapping[str, Any] | None, action: str) -> dict[str, str]:
        """What Compose's environment needs of a kept model's secrets for ``stop``, ``start``, ``restart``
        or ``down``.

        ``start`` and ``restart`` hand a secret sourced from a variable to the container again, so they
        read the values from Vault as ``up`` does; ``stop`` and ``down`` need none, and get empty ones
        (Compose refuses to load a model whose secret's variable is not set at all): a stack can be
        stopped without Vault.

        Raises:
            SecretUnavailable: ``start`` or ``restart`` of a stack whose secrets cannot be read.
        """
        references = declared(model) if model else {}
        if not references:
            return {}
        if action in ("start", "restart"):
            return await self.resolve(project, references)
        return dict.fromkeys(references, "")

    async def resolve(self, project: str, references: Mapping[str, Reference]) -> dict[str, str]:
        """Each name's value, read now (one read per path); every value is redacted from then on.

        Raises:
            SecretUnavailable: no Vault configured, Vault unreachable or refusing, no such path or key,
                or a value that is not a string of at least :data:`MIN_SECRET_LENGTH` characters.
                The message names the reference, never a value.
        """
        if not references:
            return {}
        vault = self._vault(project, references)
        by_path: dict[tuple[str, str], dict[str, Any]] = {}
        values: dict[str, str] = {}
        own = f"{vault.path_prefix}/"
        for name, ref in references.items():
            where = f"secret {name} of stack '{project}' ({ref})"
            if ref.mount == vault.mount and (ref.path + "/").startswith(own):
                # The gateway's tokens, its people and its OAuth grants live there: a compose file that
                # could read them into a container would hand its author the gateway itself.
                raise SecretUnavailable(
                    f"{where} points into {vault.mount}/{vault.path_prefix}/, where the gateway keeps its own "
                    "tokens and documents; store the stack's secrets elsewhere (docs/secrets.md)"
                )
            if (ref.mount, ref.path) not in by_path:
                try:
                    by_path[ref.mount, ref.path] = await vault.read_fields(ref.mount, ref.path)
                except VaultError as exc:
                    raise SecretUnavailable(f"cannot read {where}: {exc}; nothing was started") from None
            fields = by_path[ref.mount, ref.path]
            if ref.key not in fields:
                raise SecretUnavailable(
                    f"cannot read {where}: {ref.mount}/{ref.path} in Vault at {vault.address} has no key "
                    f"'{ref.key}'; nothing was started"
                )
            value = fields[ref.key]
            if not isinstance(value, str):
                raise SecretUnavailable(f"{where} is not a string in Vault; store it as one")
            _check_value(where, value)
            values[name] = value
        # Known before Compose or anything else sees them.
        self.redactor.add_many(values)
        return values


def _check_value(where: str, value: str) -> None:
    if len(value) < MIN_SECRET_LENGTH:
        raise SecretUnavailable(
            f"{where} has fewer than {MIN_SECRET_LENGTH} characters: too short to be a secret, and to be "
            "redacted without redacting ordinary words; store a longer one"
        )
    if len(value) > MAX_SECRET_LENGTH:
        # Linux caps one environment string at 128 KiB; Compose would fail to start with no clear word.
        raise SecretUnavailable(f"{where} is longer than {MAX_SECRET_LENGTH} characters; mount a file instead")
    if "\0" in value:
        raise SecretUnavailable(f"{where} holds a NUL character, which no environment variable can carry")
    if len(set(value)) < 4:
        raise SecretUnavailable(f"{where} has fewer than 4 distinct characters: not a secret; store a random one")


def _load_key(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = stdlib_secrets.token_bytes(32)
        partial = path.with_name(f".{path.name}.{stdlib_secrets.token_hex(4)}")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        # Two gateways sharing the state dir: the first link wins, and both use what is on disk.
        try:
            os.link(partial, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(partial)
        return _load_key(path)
    try:
        key = os.read(fd, 64)
    finally:
        os.close(fd)
    if len(key) != 32:
        raise OSError(f"{path} is not a key of 32 bytes")
    return key
