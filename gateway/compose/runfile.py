"""The judged model is what Compose runs: a private file in the gateway's state dir, never the stack's files.

The policy guard judges Compose's own normalised model of a stack (every profile enabled). ``up``
writes that very model to a file of its own (:meth:`RunFiles.write`: mode 0600, in a folder 0700
under the state dir, not in the stacks folder) and runs Compose on it, with:

- ``--project-directory`` the stack's folder (the model's paths are absolute already, and resolve there);
- an empty ``--env-file`` (the model is interpolated; a ``.env`` changed since cannot steer it);
- ``cwd`` the folder, and ``COMPOSE_EXPERIMENTAL_GIT_REMOTE=0``/``..._OCI_REMOTE=0`` in its environment
  (:func:`gateway.compose.cli.compose_environment`);
- the profiles the stack's ``.env`` turned on when it was judged, as ``--profile`` flags.

So nothing Compose reads later can differ from what was judged: a normalised model names no
``include``, ``extends``, ``env_file`` or ``label_file`` any more, and the paths it does name (binds,
build contexts, secret files) were judged where they resolve. The file stays after ``up`` as the
stack's *last judged model*: ``stop``, ``start``, ``restart`` and ``down`` act on it (or on the
project's containers by label when there is none), never on files changed since, so a hook or key
added after ``up`` never runs. ``plan`` dry-runs a judged model the same way, from a scratch file
(:meth:`RunFiles.write_scratch`). Blocking file work: call it from worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GatewayError
from .cli import ComposeCli, ComposeOutput, ProgressCallback

__all__ = ["EMPTY_ENV", "ALL_PROFILES", "RunFile", "RunFiles"]

# Compose reads it as an env file with no line: the judged model needs no variable.
EMPTY_ENV = Path(os.devnull)
# For stop, start, restart and down on a kept model: every service it knows, whichever profile ran it.
ALL_PROFILES = ("*",)
_SUFFIX = ".json"


@dataclass(frozen=True)
class RunFile:
    """A judged model on disk, and how Compose runs it for its stack."""

    path: Path
    folder: Path
    profiles: tuple[str, ...] = ()
    # The stack's secrets (name -> value), for Compose's environment: in memory, never in the file.
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    async def run(
        self, cli: ComposeCli, project: str, args: Sequence[str], progress: ProgressCallback | None = None
    ) -> ComposeOutput:
        """``docker compose ... args`` on this judged model (see the module's docstring for the flags).

        Raises:
            ComposeFailed: Compose's own error.
        """
        # A plan of a stack not deployed yet has no folder to work in; its own file's folder serves.
        cwd = self.folder if self.folder.is_dir() else self.path.parent
        return await cli.run(
            project,
            args,
            compose_file=self.path,
            cwd=cwd,
            project_directory=self.folder,
            env_file=EMPTY_ENV,
            profiles=self.profiles,
            progress=progress,
            extra_env=self.env,
        )


class RunFiles:
    """The judged models of the stacks under one stacks dir, kept under ``state_dir``."""

    def __init__(self, state_dir: Path, stacks_dir: Path) -> None:
        # Two gateways may share a state dir with stacks dirs of their own: one folder per stacks dir.
        key = hashlib.sha256(str(stacks_dir).encode("utf-8", "surrogateescape")).hexdigest()[:16]
        self.root = Path(state_dir) / "judged" / key
        self.stacks_dir = stacks_dir
        # What each kept file holds (sha256 of its bytes), its (inode, size, mtime) when written, and the
        # model it was written from: an unchanged stack's up rewrites (and syncs) nothing.
        self._written: dict[str, tuple[str, tuple[int, int, int], Mapping[str, Any]]] = {}

    def _folder(self) -> Path:
        for folder in (self.root.parent, self.root):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        return self.root

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            with os.fdopen(fd, "wb", closefd=False) as out:
                out.write(data)
                out.flush()
                os.fsync(fd)
        finally:
            os.close(fd)

    def write(self, project: str, model: Mapping[str, Any], profiles: Sequence[str] = ()) -> RunFile:
        """Keep ``model`` as the stack's last judged model, atomically, and return it ready to run.

        Raises:
            GatewayError: the state dir cannot be written (nothing runs without its judged model).
        """
        target = self.root / f"{project}{_SUFFIX}"
        run = RunFile(target, self.stacks_dir / project, tuple(profiles))
        written = self._written.get(project)
        # The very model object written last (a reused judgement): nothing to serialise or compare.
        if written is not None and written[2] is model and _stat(target) == written[1]:
            return run
        data = json.dumps(model, separators=(",", ":")).encode()
        digest = hashlib.sha256(data).hexdigest()
        if written is not None and written[0] == digest and _stat(target) == written[1]:
            self._written[project] = (digest, written[1], model)
            return run
        try:
            partial = self._folder() / f".{project}.{secrets.token_hex(6)}.tmp"
            try:
                self._write(partial, data)
                os.replace(partial, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    partial.unlink()
        except OSError as exc:
            raise _unwritable(self.root, exc) from exc
        signature = _stat(target)
        if signature is not None:
            self._written[project] = (digest, signature, model)
        return run

    def kept(self, project: str) -> RunFile | None:
        """The stack's last judged model, to act on every service it knows; None when there is none to
        act on (never brought up by this gateway, brought down since, or its folder is gone)."""
        path = self.root / f"{project}{_SUFFIX}"
        folder = self.stacks_dir / project
        if not path.is_file() or not folder.is_dir():
            return None
        return RunFile(path, folder, ALL_PROFILES)

    def read(self, project: str) -> dict[str, Any] | None:
        """The model of :meth:`kept` (for what ``down`` would take); None when there is none."""
        kept = self.kept(project)
        if kept is None:
            return None
        try:
            model = json.loads(kept.path.read_bytes())
        except (OSError, ValueError):
            return None
        return model if isinstance(model, dict) else None

    def remove(self, project: str) -> None:
        """Forget the stack's last judged model (after ``down``: nothing of it runs any more)."""
        self._written.pop(project, None)
        with contextlib.suppress(FileNotFoundError):
            (self.root / f"{project}{_SUFFIX}").unlink()

    def write_scratch(self, project: str, folder: Path, model: Mapping[str, Any], profiles: Sequence[str]) -> RunFile:
        """A judged model in a private file of its own (``plan``'s dry run); :meth:`discard` it afterwards.

        Raises:
            GatewayError: the state dir cannot be written.
        """
        try:
            path = self._folder() / f".plan.{project}.{secrets.token_hex(6)}{_SUFFIX}"
            self._write(path, json.dumps(model, separators=(",", ":")).encode())
        except OSError as exc:
            raise _unwritable(self.root, exc) from exc
        return RunFile(path, folder, tuple(profiles))

    @staticmethod
    def discard(run_file: RunFile) -> None:
        """Remove a scratch file of :meth:`write_scratch`."""
        with contextlib.suppress(FileNotFoundError):
            run_file.path.unlink()


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _unwritable(root: Path, exc: OSError) -> GatewayError:
    return GatewayError(
        f"cannot keep the judged model under {root} ({exc.strerror or exc}): Compose runs only the model the "
        "policy guard judged, from a private file in the gateway's state dir, so the state dir must be writable"
    )
