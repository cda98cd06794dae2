"""Agent tokens in Vault (KV v2), through hvac, with an async API.

A token lives at ``{mount}/{prefix}/{deployment_hash}/{key}`` (by default
``secret/agent/<hash>/compose_agent_token`` and ``.../status_panel_token``) in the data field ``token``.

hvac is blocking, so every call runs in a worker thread. Its exceptions (and those of requests
underneath) are translated here into :class:`~gateway.errors.VaultError`, whose message names
Vault's address and the secret's path and never a token.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import anyio.to_thread

from ..envparse import check_name
from ..errors import ConfigError, VaultError

__all__ = [
    "VaultClient",
    "VaultSettings",
    "SecretMissing",
    "DocumentConflict",
    "TOKEN_KEYS",
    "DEFAULT_MOUNT",
    "DEFAULT_PREFIX",
    "check_token_value",
]

logger = logging.getLogger(__name__)

DEFAULT_MOUNT = "secret"
DEFAULT_PREFIX = "agent"
# The keys the gateway reads; they are also the caller identities in gateway.auth.principals.
TOKEN_KEYS = ("compose_agent_token", "status_panel_token")
# A bearer token travels in an HTTP header: printable ASCII, no spaces.
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")

T = TypeVar("T")


class VaultSettings(Protocol):
    """Where Vault is and how to reach it: the ``vault_*`` fields of the gateway's and the panel's settings."""

    @property
    def vault_address(self) -> str | None: ...
    @property
    def vault_token(self) -> str | None: ...
    @property
    def vault_agent_path_prefix(self) -> str: ...
    @property
    def vault_token_key(self) -> str | None: ...


class SecretMissing(VaultError):
    """No secret at the path, or its latest version is deleted: the token is not configured (or revoked)."""


class DocumentConflict(VaultError):
    """A check-and-set write found another version than the one it was based on; read again and retry."""


def check_token_value(token: str) -> str:
    """``token`` if it can be used as a bearer token, else :class:`ConfigError` (which never quotes it)."""
    if not token:
        raise ConfigError("the token is empty")
    if not _TOKEN_CHARS.fullmatch(token):
        raise ConfigError("the token has spaces, control or non-ASCII characters; it must fit in an HTTP header")
    return token


def _checked(kind: str, value: str) -> str:
    try:
        return check_name(kind, value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class VaultClient:
    """Reads and writes agent tokens in one Vault (KV v2 mount ``secret`` by default).

    Every method that talks to Vault is async and runs hvac in a worker thread; a cancelled call
    is abandoned at once (the thread finishes on its own, bounded by ``timeout``).
    """

    def __init__(
        self,
        address: str,
        token: str,
        *,
        path_prefix: str = DEFAULT_PREFIX,
        default_key: str | None = None,
        mount: str = DEFAULT_MOUNT,
        timeout: float = 5.0,
    ) -> None:
        if not address:
            raise ConfigError("VAULT_ADDRESS is not set")
        if not re.match(r"^https?://[^/\s]+", address):
            raise ConfigError(f"VAULT_ADDRESS {address!r} is not an http:// or https:// URL")
        if not token:
            raise ConfigError(f"VAULT_TOKEN is not set; it is needed to talk to Vault at {address}")
        self.address = address.rstrip("/")
        self.mount = _checked("mount", mount)
        self.path_prefix = "/".join(_checked("path prefix segment", p) for p in path_prefix.strip("/").split("/"))
        self.default_key = None if default_key is None else _checked("token key", default_key)
        self.timeout = timeout
        # Imported here: hvac and requests take about 130 ms to import, which a gateway without Vault
        # (stdio under uvx, say) would pay on every start.
        import hvac

        # The token is passed explicitly so hvac never falls back to ~/.vault-token or the process env.
        self._client = hvac.Client(url=self.address, token=token, timeout=timeout)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **kwargs: Any) -> VaultClient:
        """A client from ``VAULT_ADDRESS``, ``VAULT_TOKEN``, ``VAULT_AGENT_PATH_PREFIX`` (default ``agent``)
        and ``VAULT_TOKEN_KEY`` (the default key, optional).

        Raises:
            ConfigError: ``VAULT_ADDRESS`` or ``VAULT_TOKEN`` is missing, or a name is unsafe.
        """
        return cls(
            environ.get("VAULT_ADDRESS", ""),
            environ.get("VAULT_TOKEN", ""),
            path_prefix=environ.get("VAULT_AGENT_PATH_PREFIX") or DEFAULT_PREFIX,
            default_key=environ.get("VAULT_TOKEN_KEY") or None,
            **kwargs,
        )

    @classmethod
    def from_settings(cls, settings: VaultSettings, **kwargs: Any) -> VaultClient:
        """A client from the ``vault_*`` fields of the settings.

        Raises:
            ConfigError: ``vault_address`` or ``vault_token`` is missing.
        """
        return cls(
            settings.vault_address or "",
            settings.vault_token or "",
            path_prefix=settings.vault_agent_path_prefix,
            default_key=settings.vault_token_key,
            **kwargs,
        )

    def relative_path(self, deployment_hash: str, key: str | None = None) -> str:
        """The secret's path inside the mount: ``{prefix}/{deployment_hash}/{key}``.

        Raises:
            ConfigError: the hash or key is not a safe path segment, or no key was given and there is no default.
        """
        if key is None:
            key = self.default_key
        if key is None:
            raise ConfigError("no token key given and VAULT_TOKEN_KEY is not set")
        return f"{self.path_prefix}/{_checked('deployment hash', deployment_hash)}/{_checked('token key', key)}"

    def path(self, deployment_hash: str, key: str | None = None) -> str:
        """The full path as an operator writes it: ``secret/agent/<hash>/<key>``."""
        return f"{self.mount}/{self.relative_path(deployment_hash, key)}"

    def describe(self, deployment_hash: str, keys: tuple[str, ...] = TOKEN_KEYS) -> str:
        """``Vault at <address> (secret/agent/<hash>/{a,b})``: for logs and errors; holds no token."""
        base = f"{self.mount}/{self.path_prefix}/{_checked('deployment hash', deployment_hash)}"
        return f"Vault at {self.address} ({base}/{{{','.join(keys)}}})"

    async def fetch_agent_token(self, deployment_hash: str, key: str | None = None) -> str:
        """The token stored at ``secret/{prefix}/{deployment_hash}/{key}``.

        Raises:
            VaultError: Vault is unreachable, denies access, holds no such secret (or its latest
                version is deleted), or the secret has no string field ``token``.
            ConfigError: an unsafe hash or key.
        """
        rel = self.relative_path(deployment_hash, key)
        response = await self._call(
            "read",
            rel,
            lambda: self._client.secrets.kv.v2.read_secret_version(
                path=rel, mount_point=self.mount, raise_on_deleted_version=True
            ),
        )
        try:
            token = response["data"]["data"]["token"]
        except (KeyError, TypeError):
            raise VaultError(f"the secret {self.mount}/{rel} in Vault at {self.address} has no field 'token'") from None
        if not isinstance(token, str) or not token:
            raise VaultError(f"the field 'token' of {self.mount}/{rel} in Vault at {self.address} is not a string")
        return token

    async def store_agent_token(self, deployment_hash: str, token: str, key: str | None = None) -> None:
        """Write ``token`` as a new version of ``secret/{prefix}/{deployment_hash}/{key}`` (field ``token``).

        Raises:
            VaultError: Vault is unreachable or denies the write.
            ConfigError: an unsafe hash or key, or a token that cannot be a bearer token.
        """
        rel = self.relative_path(deployment_hash, key)
        check_token_value(token)
        await self._call(
            "write",
            rel,
            lambda: self._client.secrets.kv.v2.create_or_update_secret(
                path=rel, secret={"token": token}, mount_point=self.mount
            ),
        )
        logger.info("stored a new version of %s/%s in Vault at %s", self.mount, rel, self.address)

    async def read_document(self, deployment_hash: str, key: str) -> tuple[dict[str, Any] | None, int]:
        """The data of ``secret/{prefix}/{deployment_hash}/{key}`` and its version; ``(None, 0)`` if there is none.

        For documents the gateway keeps in Vault beside its tokens (people, OAuth grants).

        Raises:
            VaultError: Vault is unreachable or denies the read.
            ConfigError: an unsafe hash or key.
        """
        rel = self.relative_path(deployment_hash, key)
        try:
            response = await self._call(
                "read",
                rel,
                lambda: self._client.secrets.kv.v2.read_secret_version(
                    path=rel, mount_point=self.mount, raise_on_deleted_version=True
                ),
            )
        except SecretMissing:
            return None, 0
        try:
            data, version = response["data"]["data"], response["data"]["metadata"]["version"]
        except (KeyError, TypeError):
            raise VaultError(f"Vault at {self.address} answered the read of {self.mount}/{rel} without data") from None
        if not isinstance(data, dict) or not isinstance(version, int):
            raise VaultError(f"the secret {self.mount}/{rel} in Vault at {self.address} is not a document")
        return data, version

    async def write_document(
        self, deployment_hash: str, key: str, data: dict[str, Any], *, cas: int | None = None
    ) -> int:
        """Write ``data`` as a new version of ``secret/{prefix}/{deployment_hash}/{key}``; its version.

        With ``cas``, only if the current version is ``cas`` (0: only if there is none yet).

        Raises:
            DocumentConflict: ``cas`` is not the current version (someone else wrote in between).
            VaultError: Vault is unreachable or denies the write.
            ConfigError: an unsafe hash or key.
        """
        rel = self.relative_path(deployment_hash, key)
        try:
            response = await self._call(
                "write",
                rel,
                lambda: self._client.secrets.kv.v2.create_or_update_secret(
                    path=rel, secret=data, cas=cas, mount_point=self.mount
                ),
            )
        except VaultError as exc:
            # Vault says so only in words: "check-and-set parameter did not match the current version".
            if cas is not None and "check-and-set" in str(exc):
                raise DocumentConflict(f"{self.mount}/{rel} in Vault at {self.address} changed meanwhile") from None
            raise
        try:
            return int(response["data"]["version"])
        except (KeyError, TypeError, ValueError):
            raise VaultError(
                f"Vault at {self.address} answered the write of {self.mount}/{rel} without a version"
            ) from None

    async def read_fields(self, mount: str, path: str) -> dict[str, Any]:
        """The data of the KV v2 secret ``path`` in ``mount`` (any mount, not only this client's): for the
        secrets stacks reference (:mod:`gateway.secretrefs`, which checked both names).

        Raises:
            SecretMissing: no secret at the path, or its latest version is deleted.
            VaultError: Vault is unreachable or denies the read, or answers without data.
        """
        response = await self._call_in(
            "read",
            mount,
            path,
            lambda: self._client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=mount, raise_on_deleted_version=True
            ),
        )
        try:
            data = response["data"]["data"]
        except (KeyError, TypeError):
            raise VaultError(f"Vault at {self.address} answered the read of {mount}/{path} without data") from None
        if not isinstance(data, dict):
            raise VaultError(f"the secret {mount}/{path} in Vault at {self.address} is not a document")
        return data

    def close(self) -> None:
        """Close the HTTP session underneath."""
        self._client.adapter.close()

    async def _call(self, verb: str, rel: str, func: Callable[[], T]) -> T:
        return await self._call_in(verb, self.mount, rel, func)

    async def _call_in(self, verb: str, mount: str, rel: str, func: Callable[[], T]) -> T:
        import hvac.exceptions
        import requests.exceptions

        try:
            return await anyio.to_thread.run_sync(func, abandon_on_cancel=True)
        except (requests.exceptions.RequestException, hvac.exceptions.VaultError) as exc:
            raise self._translate(exc, verb, f"{mount}/{rel}") from exc

    def _translate(self, exc: Exception, verb: str, path: str) -> VaultError:
        import hvac.exceptions
        import requests.exceptions

        where = f"Vault at {self.address}"
        if isinstance(exc, requests.exceptions.Timeout):
            return VaultError(f"{where} did not answer within {self.timeout:g}s to {verb} {path}")
        if isinstance(exc, requests.exceptions.RequestException):
            return VaultError(f"cannot reach {where} to {verb} {path} ({type(exc).__name__})")
        if isinstance(exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized):
            return VaultError(f"permission denied by {where} to {verb} {path}; check VAULT_TOKEN and its policy")
        if isinstance(exc, hvac.exceptions.InvalidPath):
            return SecretMissing(f"no secret at {path} in {where} (never written, or its latest version is deleted)")
        if isinstance(exc, hvac.exceptions.VaultDown):
            return VaultError(f"{where} is sealed or unavailable; could not {verb} {path}")
        # Vault's own error strings name paths, not tokens, but take no chances with what we echo.
        errors = getattr(exc, "errors", None) or []
        detail = ", ".join(str(e) for e in errors) or type(exc).__name__
        if self._client.token:
            detail = detail.replace(self._client.token, "<VAULT_TOKEN>")
        return VaultError(f"{where} refused to {verb} {path}: {detail}")
