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

Blocking file-system code: callers run it in a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import GatewayError, InvalidInput
from ..stacks import COMPOSE_FILENAMES

__all__ = ["STATE_DIRNAME", "KEEP_VERSIONS", "Snapshot", "VersionMeta", "VersionStore", "sha256_hex"]

logger = logging.getLogger(__name__)

STATE_DIRNAME = ".compose-agent"
KEEP_VERSIONS = 20
# A scratch or staging folder older than this was left by a process that died mid-write.
_STALE_TMP_S = 3600.0
_COMPOSE = "compose.yaml"
_ENV = ".env"
_META = "meta.json"


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
    """The versions of every stack under one stacks dir."""

    def __init__(self, stacks_dir: Path, *, keep: int = KEEP_VERSIONS) -> None:
        if keep < 2:
            raise ValueError("keep at least 2 versions, or there is nothing to roll back to")
        self.stacks_dir = stacks_dir
        self.root = stacks_dir / STATE_DIRNAME
        self.keep = keep

    # -- folders --------------------------------------------------------------------------------

    def _private_dir(self, path: Path) -> Path:
        """``path`` (under the root), created 0700 with every folder between: versions copy ``.env`` files."""
        folder = self.root
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for part in path.relative_to(self.root).parts:
            folder = folder / part
            folder.mkdir(mode=0o700, exist_ok=True)
        return path

    def make_scratch(self, project: str) -> Path:
        """A fresh, private folder on the stacks dir's file system; hand it to :meth:`remove_scratch` after."""
        tmp = self._private_dir(self.root / "tmp")
        self._sweep_stale(tmp)
        folder = tmp / f"{project}-{secrets.token_hex(6)}"
        folder.mkdir(mode=0o700)
        return folder

    @staticmethod
    def remove_scratch(folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)

    @staticmethod
    def _sweep_stale(tmp: Path) -> None:
        now = time.time()
        for entry in tmp.iterdir():
            try:
                if now - entry.lstat().st_mtime > _STALE_TMP_S:
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                continue

    def _project_dir(self, project: str) -> Path:
        return self.root / "versions" / project

    # -- reading ----------------------------------------------------------------------------------

    def history(self, project: str) -> list[VersionMeta]:
        """Every kept version of ``project``, oldest first."""
        folder = self._project_dir(project)
        metas: list[VersionMeta] = []
        for number in self._numbers(folder):
            try:
                raw = json.loads((folder / str(number) / _META).read_text(encoding="utf-8"))
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
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("skipping unreadable version %s of stack %s: %s", number, project, exc)
        return metas

    @staticmethod
    def _numbers(folder: Path) -> list[int]:
        try:
            names = [entry.name for entry in folder.iterdir() if entry.is_dir()]
        except FileNotFoundError:
            return []
        return sorted(int(name) for name in names if name.isdigit() and not name.startswith("0"))

    def current(self, project: str) -> int | None:
        """The version on disk now, as the last deploy or rollback left it; None before the first one."""
        try:
            text = (self._project_dir(project) / "current").read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def read(self, project: str, version: int) -> Snapshot:
        """The files of one version.

        Raises:
            InvalidInput: no such version, naming the ones there are.
        """
        folder = self._project_dir(project) / str(version)
        try:
            compose = (folder / _COMPOSE).read_bytes()
        except FileNotFoundError:
            known = ", ".join(str(m) for m in self._numbers(self._project_dir(project))) or "none"
            raise InvalidInput(f"stack '{project}' has no version {version}; kept versions: {known}") from None
        try:
            env: bytes | None = (folder / _ENV).read_bytes()
        except FileNotFoundError:
            env = None
        return Snapshot(compose, env)

    @staticmethod
    def on_disk(folder: Path) -> tuple[Path, Snapshot] | None:
        """The compose file a stack folder uses (the one discovery picks) and its snapshot, or None."""
        for name in COMPOSE_FILENAMES:
            path = folder / name
            if path.is_file():
                try:
                    env: bytes | None = (folder / _ENV).read_bytes()
                except FileNotFoundError:
                    env = None
                return path, Snapshot(path.read_bytes(), env)
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
        folder = self._private_dir(self._project_dir(project))
        staging = self._stage(project, snapshot)
        meta = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "sha256": snapshot.sha256,
            "source": source,
            "caller": caller,
            "env_names": list(env_names),
        }
        _write_file(staging / _META, json.dumps(meta, indent=2).encode() + b"\n", mode=0o600)
        number = (self._numbers(folder) or [0])[-1] + 1
        while True:
            try:
                # A version folder is never empty, so rename refuses to land on one that exists:
                # a second process numbering at the same moment takes the next number instead.
                os.rename(staging, folder / str(number))
                break
            except OSError:
                if not (folder / str(number)).exists():
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
                number += 1
        self._prune(project)
        return number

    def _stage(self, project: str, snapshot: Snapshot) -> Path:
        staging = self._private_dir(self.root / "tmp") / f"{project}-v-{secrets.token_hex(6)}"
        staging.mkdir(mode=0o700)
        _write_file(staging / _COMPOSE, snapshot.compose, mode=0o600)
        if snapshot.env is not None:
            _write_file(staging / _ENV, snapshot.env, mode=0o600)
        return staging

    def set_current(self, project: str, version: int) -> None:
        folder = self._private_dir(self._project_dir(project))
        _replace_file(folder / "current", f"{version}\n".encode(), mode=0o600)

    def _prune(self, project: str) -> None:
        folder = self._project_dir(project)
        numbers = self._numbers(folder)
        current = self.current(project)
        excess = len(numbers) - self.keep
        for number in numbers:
            if excess <= 0:
                break
            if number == current:
                continue
            shutil.rmtree(folder / str(number), ignore_errors=True)
            excess -= 1

    def install(self, project: str, snapshot: Snapshot) -> Path:
        """Put ``snapshot`` into the stack folder; returns the compose file's path.

        A new stack's folder is staged whole and renamed into place. An existing stack keeps its
        folder (bind mounts hold it open) and gets each file replaced by rename; a snapshot without
        ``.env`` removes the stack's ``.env``.

        Raises:
            GatewayError: the stacks dir cannot be written.
        """
        target = self.stacks_dir / project
        try:
            existing = self.on_disk(target)
            if existing is None and not target.exists():
                staging = self._stage(project, snapshot)
                os.chmod(staging, 0o755)
                os.rename(staging, target)
                return target / _COMPOSE
            compose_path = existing[0] if existing is not None else target / _COMPOSE
            if snapshot.env is None:
                (target / _ENV).unlink(missing_ok=True)
            else:
                _replace_file(target / _ENV, snapshot.env, mode=0o600)
            _replace_file(compose_path, snapshot.compose, mode=0o644)
            return compose_path
        except OSError as exc:
            raise GatewayError(f"cannot write the stack folder of '{project}': {exc.strerror or exc}") from exc


def _write_file(path: Path, data: bytes, *, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _replace_file(path: Path, data: bytes, *, mode: int) -> None:
    """Write beside ``path``, then rename over it: readers see the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        _write_file(tmp, data, mode=mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
