"""Numbered versions of a stack's compose file and ``.env``, and the atomic writes that install them.

Everything lives in a hidden folder of the stacks dir, ``.compose-agent/``:

- ``tmp/``: scratch folders for validating a candidate with Compose, and staging folders for
  writes. They sit on the stacks dir's file system, so a finished folder is renamed into place.
- ``versions/<project>/<n>/``: ``compose.yaml``, ``.env`` when the stack had one, and
  ``meta.json``. ``versions/<project>/current`` names the version that is on disk now.

Discovery never lists the folder (a stack name cannot start with a dot), and no tool serves a
file from it: versions are read back only by :meth:`VersionStore.read`, for a rollback.

A stack folder holds more than its compose file (the site a service serves, the data a bind mount
writes), and running containers hold those folders open. So a new stack appears as a whole folder
renamed into place, and an existing stack gets its compose file and ``.env`` replaced one file at a
time, each written beside the target and renamed over it: the folder itself is never moved.

Every folder and file here is reached by descriptor, one step at a time and never through a link
(:mod:`gateway.folders`, and :mod:`gateway.deploy.state` for ``.compose-agent/``): a compose file,
``.env`` or kept version that is a link, a special file or a hard link is refused, naming the stack.

Blocking file-system code: callers run it in a worker thread.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import GatewayError, InvalidInput
from ..folders import Folder
from ..stacks import COMPOSE_FILENAMES
from .state import STATE_DIRNAME, StateDir, numbers, stage

__all__ = ["STATE_DIRNAME", "KEEP_VERSIONS", "MAX_FILE_BYTES", "Snapshot", "VersionMeta", "VersionStore", "sha256_hex"]

logger = logging.getLogger(__name__)

KEEP_VERSIONS = 20
_COMPOSE = "compose.yaml"
_ENV = ".env"
_META = "meta.json"
_CURRENT = "current"
_MAX_META_BYTES = 64 * 1024
# The most of one file the gateway keeps or installs: far above a compose file or a .env (the guard
# reads files up to 1 MiB), far below what a planted multi-gigabyte file would cost its memory.
MAX_FILE_BYTES = 4 * 1024 * 1024


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Snapshot:
    """A compose file and the ``.env`` beside it (None: the stack has no ``.env``)."""

    compose: bytes
    env: bytes | None

    @property
    def sha256(self) -> str:
        """The compose file's hash, as audit lines and version listings show it."""
        return sha256_hex(self.compose)

    def same_as(self, other: Snapshot) -> bool:
        return self.compose == other.compose and self.env == other.env


@dataclass(frozen=True)
class VersionMeta:
    """What a version's ``meta.json`` says about it. Never holds an ``.env`` value."""

    version: int
    created: str
    sha256: str
    source: str
    caller: str
    env_names: tuple[str, ...] = ()


class VersionStore:
    """The versions of every stack under one stacks dir.

    Every folder and file is reached from the stacks dir one step at a time, by descriptor and
    without following a link (see :mod:`gateway.folders`): what is refused raises
    :class:`~gateway.folders.NotFollowed`, naming the stack.
    """

    def __init__(self, stacks_dir: Path, *, keep: int = KEEP_VERSIONS) -> None:
        if keep < 2:
            raise ValueError("keep at least 2 versions, or there is nothing to roll back to")
        self.stacks_dir = stacks_dir
        self.state = StateDir(stacks_dir)
        self.root = self.state.root
        self.keep = keep

    def make_scratch(self, project: str, files: Mapping[str, bytes] | None = None) -> Path:
        """A fresh, private folder on the stacks dir's file system holding ``files``; see :class:`StateDir`."""
        return self.state.make_scratch(project, files)

    def remove_scratch(self, folder: Path) -> None:
        self.state.remove_scratch(folder)

    # -- reading ----------------------------------------------------------------------------------

    def history(self, project: str) -> list[VersionMeta]:
        """Every kept version of ``project``, oldest first.

        Raises:
            NotFollowed: the stack folder, a state folder, a version or its ``meta.json`` is a link
                (or a special or hard-linked file).
        """
        self.state.refuse_linked_stack(project)
        metas: list[VersionMeta] = []
        with self.state.opened(project, "versions", project) as folder:
            for number in numbers(folder):
                assert folder is not None  # it has numbers
                try:
                    with folder.opened(str(number)) as version:
                        meta = version.read(_META, limit=_MAX_META_BYTES) if version is not None else None
                    raw = json.loads(meta or b"")
                    metas.append(
                        VersionMeta(
                            version=number,
                            created=str(raw["created"]),
                            sha256=str(raw["sha256"]),
                            source=str(raw["source"]),
                            caller=str(raw["caller"]),
                            env_names=tuple(str(n) for n in raw.get("env_names", [])),
                        )
                    )
                except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # a broken meta.json
                    logger.warning("skipping unreadable version %s of stack %s: %s", number, project, exc)
        return metas

    def current(self, project: str) -> int | None:
        """The version on disk now, as the last deploy or rollback left it; None before the first one."""
        with self.state.opened(project, "versions", project) as folder:
            data = folder.read(_CURRENT, limit=64) if folder is not None else None
        text = (data or b"").decode("ascii", "replace").strip()
        return int(text) if text.isascii() and text.isdigit() else None

    def read(self, project: str, version: int) -> Snapshot:
        """The files of one version.

        Raises:
            InvalidInput: no such version, naming the ones there are.
            NotFollowed: the version or one of its files is a link (or a special or hard-linked file).
        """
        self.state.refuse_linked_stack(project)
        compose = env = None
        with self.state.opened(project, "versions", project) as folder:
            kept_numbers = numbers(folder)
            if folder is not None and version in kept_numbers:
                with folder.opened(str(version)) as kept:
                    if kept is not None:
                        compose = kept.read(_COMPOSE, limit=MAX_FILE_BYTES)
                        env = kept.read(_ENV, limit=MAX_FILE_BYTES)
        if compose is None:
            known = ", ".join(map(str, kept_numbers)) or "none"
            raise InvalidInput(f"stack '{project}' has no version {version}; kept versions: {known}")
        return Snapshot(compose, env)

    @staticmethod
    def on_disk(folder: Path) -> tuple[Path, Snapshot] | None:
        """The compose file a stack folder uses (the one discovery picks) and its snapshot, or None.

        Raises:
            NotFollowed: the folder, its compose file or its ``.env`` is a link, a special or a
                hard-linked file: nothing of it is read or kept.
        """
        top = Folder.stacks_dir(folder.parent, folder.name)
        if top is None:
            return None
        with top, top.opened(folder.name) as stack:
            if stack is None:
                return None
            for name in COMPOSE_FILENAMES:
                compose = stack.read(name, limit=MAX_FILE_BYTES)
                if compose is not None:
                    return folder / name, Snapshot(compose, stack.read(_ENV, limit=MAX_FILE_BYTES))
        return None

    # -- which version --------------------------------------------------------------------------

    def on_disk_version(self, project: str) -> int | None:
        """The kept version whose files are on disk now; None when they differ (edited by hand) or are gone."""
        current = self.current(project)
        existing = self.on_disk(self.stacks_dir / project)
        if current is None or existing is None:
            return None
        try:
            return current if self.read(project, current).same_as(existing[1]) else None
        except InvalidInput:
            return None

    def rollback_target(self, project: str, version: int | None) -> int:
        """The version a rollback brings back: ``version``, or the one before the version on disk.

        Raises:
            InvalidInput: no such version, it is already on disk, or there is none before it.
        """
        numbers = [m.version for m in self.history(project)]
        if not numbers:
            raise InvalidInput(f"stack '{project}' has no kept versions; only stacks changed by deploy have them")
        on_disk = self.on_disk_version(project)
        if version is not None:
            if version not in numbers:
                raise InvalidInput(
                    f"stack '{project}' has no version {version}; kept versions: {', '.join(map(str, numbers))}"
                )
            if version == on_disk:
                raise InvalidInput(f"version {version} of '{project}' is already on disk; use up to apply it again")
            return version
        if on_disk is None:
            # The files were edited or removed by hand: go back to the last version the gateway wrote.
            return self.current(project) or numbers[-1]
        earlier = [n for n in numbers if n < on_disk]
        if not earlier:
            raise InvalidInput(f"stack '{project}' has no version before {on_disk}; kept versions: {numbers}")
        return earlier[-1]

    # -- writing ----------------------------------------------------------------------------------

    def record(
        self, project: str, snapshot: Snapshot, *, source: str, caller: str, env_names: tuple[str, ...] = ()
    ) -> int:
        """Keep ``snapshot`` as the next numbered version and return its number. Does not make it current."""
        meta = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "sha256": snapshot.sha256,
            "source": source,
            "caller": caller,
            "env_names": list(env_names),
        }
        files = {_COMPOSE: snapshot.compose, _META: json.dumps(meta, indent=2).encode() + b"\n"}
        if snapshot.env is not None:
            files[_ENV] = snapshot.env
        with self.state.made(project, "tmp") as tmp, self.state.made(project, "versions", project) as folder:
            staging = stage(tmp, f"{project}-v", files)
            number = (numbers(folder) or [0])[-1] + 1
            while True:
                try:
                    # A version folder is never empty, so rename refuses to land on one that exists:
                    # a second process numbering at the same moment takes the next number instead.
                    tmp.move(staging, folder, str(number))
                    break
                except OSError:
                    if folder.lstat(str(number)) is None:
                        tmp.remove(staging)
                        raise
                    number += 1
        self._prune(project)
        return number

    def set_current(self, project: str, version: int) -> None:
        with self.state.made(project, "versions", project) as folder:
            folder.replace(_CURRENT, f"{version}\n".encode(), mode=0o600)

    def _prune(self, project: str) -> None:
        current = self.current(project)
        with self.state.opened(project, "versions", project) as folder:
            kept = numbers(folder)
            excess = len(kept) - self.keep
            for number in kept:
                if excess <= 0 or folder is None:
                    break
                if number == current:
                    continue
                folder.remove(str(number))
                excess -= 1

    def install(self, project: str, snapshot: Snapshot) -> Path:
        """Put ``snapshot`` into the stack folder; returns the compose file's path.

        A new stack's folder is staged whole and renamed into place. An existing stack keeps its
        folder (bind mounts hold it open) and gets each file replaced by rename (a link in its place
        is replaced, never written through); a snapshot without ``.env`` removes the stack's ``.env``.

        Raises:
            GatewayError: the stacks dir cannot be written.
            NotFollowed: the stack folder is a link or not a folder.
        """
        try:
            top = Folder.stacks_dir(self.stacks_dir, project, create=True)
            assert top is not None  # just made
            with top:
                if top.lstat(project) is None:
                    files = {_COMPOSE: snapshot.compose} | ({} if snapshot.env is None else {_ENV: snapshot.env})
                    with self.state.made(project, "tmp") as tmp:
                        staging = stage(tmp, project, files)
                        try:
                            with tmp.opened(staging) as staged:
                                if staged is not None:
                                    os.fchmod(staged.fd, 0o755)
                            tmp.move(staging, top, project)
                        except BaseException:
                            tmp.remove(staging)
                            raise
                    return self.stacks_dir / project / _COMPOSE
                with top.opened(project) as folder:
                    if folder is None:
                        raise FileNotFoundError(errno.ENOENT, "removed while being written", project)
                    name = next((n for n in COMPOSE_FILENAMES if folder.lstat(n) is not None), _COMPOSE)
                    if snapshot.env is None:
                        folder.unlink(_ENV)
                    else:
                        folder.replace(_ENV, snapshot.env, mode=0o600)
                    folder.replace(name, snapshot.compose, mode=0o644)
                return self.stacks_dir / project / name
        except OSError as exc:
            raise GatewayError(f"cannot write the stack folder of '{project}': {exc.strerror or exc}") from exc
