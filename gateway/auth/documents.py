"""JSON documents the gateway keeps beside its tokens: a file in the state folder, or a secret in Vault.

The people (``people``) and the OAuth grants (``oauth``) live in such documents. Both kinds:

- are read whole and written whole, so a reader never sees half a change;
- carry a version, so a reader can tell cheaply whether anything changed, and a writer that read
  version N can refuse to overwrite what someone else wrote since (check-and-set);
- hold secrets' hashes only, yet are kept private: the file is mode 0600 in a 0700 folder, and
  Vault's own policies guard the secret.

A file is written under a temporary name, synced and renamed over the old one; writers (the
``users`` command beside a running gateway) take an exclusive ``flock`` on a lock file beside it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread

from ..errors import ConfigError, VaultError
from .vault import DocumentConflict, VaultClient

__all__ = ["Document", "DocumentConflict", "FileDocument", "Snapshot", "VaultDocument", "Change"]

logger = logging.getLogger(__name__)

# Far beyond what thousands of people or tokens take; a larger file is not ours.
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024
_CAS_ATTEMPTS = 8

Change = Callable[[dict[str, Any] | None], dict[str, Any]]


@dataclass(frozen=True)
class Snapshot:
    """A document as read: its data (None: it does not exist) and the version that data is."""

    data: dict[str, Any] | None
    version: str


class Document(Protocol):
    """A JSON object stored somewhere, read and written whole."""

    #: Where it is, for logs and errors (never its content).
    description: str

    async def read(self) -> Snapshot:
        """The document now.

        Raises:
            ConfigError: the document is not valid JSON or not an object (someone edited it badly).
            VaultError: Vault could not be read.
        """
        ...

    async def changed(self, since: Snapshot) -> bool:
        """True when the document may differ from ``since`` (cheap: a ``stat`` for a file)."""
        ...

    async def update(self, change: Change) -> dict[str, Any]:
        """Apply ``change`` to the current data and write the result, unless someone wrote in between
        (then read again and apply it again). Returns what was written.

        Raises:
            ConfigError, VaultError: the document cannot be read or written.
            Whatever ``change`` raises, with nothing written.
        """
        ...

    async def replace(self, data: dict[str, Any]) -> None:
        """Write ``data`` whatever is there now (for a document with one writer).

        Raises:
            ConfigError, VaultError: the document cannot be written.
        """
        ...


class FileDocument:
    """A JSON file, mode 0600, in a folder made 0700."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.description = f"the file {self.path}"
        self._lock_path = self.path.with_name(f".{self.path.name}.lock")

    # -- reading ----------------------------------------------------------------------------------

    def _stamp(self) -> str:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "absent"
        # A rename gives a new inode, so two writes within one mtime tick still differ.
        return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"

    def read_sync(self) -> Snapshot:
        """:meth:`read`, blocking."""
        try:
            with open(self.path, "rb") as handle:
                st = os.fstat(handle.fileno())
                if st.st_size > MAX_DOCUMENT_BYTES:
                    raise ConfigError(f"{self.description} is larger than {MAX_DOCUMENT_BYTES} bytes; it is not ours")
                raw = handle.read(MAX_DOCUMENT_BYTES + 1)
        except FileNotFoundError:
            return Snapshot(None, "absent")
        except OSError as exc:
            raise ConfigError(f"cannot read {self.description}: {exc.strerror or exc}") from None
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            # It holds password and token hashes: close it again, and say so.
            try:
                os.chmod(self.path, 0o600)
            except OSError:
                pass
            logger.warning("%s was mode %o; set it back to 0600", self.description, mode)
        return Snapshot(self._parse(raw), f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}")

    def _parse(self, raw: bytes) -> dict[str, Any]:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.description} is not valid JSON ({exc}); restore it from a backup") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.description} must hold a JSON object")
        return data

    async def read(self) -> Snapshot:
        return await anyio.to_thread.run_sync(self.read_sync)

    async def changed(self, since: Snapshot) -> bool:
        return await anyio.to_thread.run_sync(self._stamp) != since.version

    # -- writing ----------------------------------------------------------------------------------

    def _prepare_folder(self) -> None:
        folder = self.path.parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(folder.stat().st_mode) & 0o077:
            os.chmod(folder, 0o700)

    def _write(self, data: dict[str, Any]) -> None:
        payload = json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}-", dir=self.path.parent)  # created 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        # The rename itself is durable only once the folder is synced.
        dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def update_sync(self, change: Change) -> dict[str, Any]:
        """:meth:`update`, blocking."""
        try:
            self._prepare_folder()
            lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot write {self.description}: {exc.strerror or exc}") from None
        try:
            # Writers queue here; readers never wait (they see the old file or the new one).
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            current = self.read_sync().data
            updated = change(current)
            try:
                self._write(updated)
            except OSError as exc:
                raise ConfigError(f"cannot write {self.description}: {exc.strerror or exc}") from None
            return updated
        finally:
            os.close(lock_fd)  # closing releases the lock

    async def update(self, change: Change) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(self.update_sync, change)

    async def replace(self, data: dict[str, Any]) -> None:
        await self.update(lambda _current: data)


class VaultDocument:
    """A KV v2 secret ``secret/{prefix}/{deployment_hash}/{key}`` whose data is the document."""

    def __init__(self, client: VaultClient, deployment_hash: str, key: str) -> None:
        self.client = client
        self.deployment_hash = deployment_hash
        self.key = key
        self.description = f"{client.path(deployment_hash, key)} in Vault at {client.address}"

    async def read(self) -> Snapshot:
        data, version = await self.client.read_document(self.deployment_hash, self.key)
        return Snapshot(data, str(version))

    async def changed(self, since: Snapshot) -> bool:
        # Reading the version costs as much as reading the data: the caller polls at its own pace.
        return (await self.read()).version != since.version

    async def update(self, change: Change) -> dict[str, Any]:
        for _ in range(_CAS_ATTEMPTS):
            data, version = await self.client.read_document(self.deployment_hash, self.key)
            updated = change(data)
            try:
                await self.client.write_document(self.deployment_hash, self.key, updated, cas=version)
            except DocumentConflict:
                continue
            return updated
        raise VaultError(f"{self.description} kept changing while being written; try again")

    async def replace(self, data: dict[str, Any]) -> None:
        await self.client.write_document(self.deployment_hash, self.key, data)
