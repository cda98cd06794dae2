"""What one strict reading of a stack yields: the files read, the references found, and the errors.

:func:`gateway.policy.reader.read_stack` produces a :class:`Reading`; the judge, the guard's cache
and the confirmations (which bind to :attr:`Reading.digest`) consume it. Immutable, so one reading is
resolved once and passed down.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import ComposeFailed, PolicyViolation

__all__ = ["FileReference", "ReadFile", "Reading", "ReadRefused", "Unloadable"]


class ReadRefused(PolicyViolation):
    """The stack's files cannot be read the one strict way; ``code`` names why (``yaml_tag``, ``yaml_budget``...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Unloadable(ComposeFailed):
    """A compose file inside the folder does not load (not valid YAML, or missing): the same kind as
    Compose's own load error, found before Compose runs. ``code`` is ``invalid_yaml`` or ``missing_file``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class FileReference:
    """A file Compose reads (or mounts) on the host because a compose file names it.

    ``paths`` are the absolute, lexically normalised paths it resolves to, as compose-go joins them;
    empty when the value cannot be resolved here, and ``problem`` then says why.
    """

    kind: str
    service: str | None
    value: str
    paths: tuple[Path, ...]
    problem: str = ""


@dataclass(frozen=True)
class ReadFile:
    """A file the guard read: where Compose names it, what it is, and a hash of its bytes."""

    path: Path
    kind: str
    sha256: str
    # (inode, size, mtime, ctime): ctime too, since a writer can set mtime back but not ctime.
    signature: tuple[int, int, int, int]


@dataclass(frozen=True)
class Reading:
    """Everything the guard read of one stack: immutable, so one reading is judged and passed on.

    ``absent`` holds files whose absence shapes the model (a ``.env`` that may appear later).
    ``profiles`` are those the project's ``.env`` turns on (``COMPOSE_PROFILES``): the judged model
    holds every profile, and runs with these (see :mod:`gateway.policy.profiles`).
    """

    folder: Path
    compose_files: tuple[Path, ...]
    files: tuple[ReadFile, ...]
    absent: tuple[Path, ...]
    references: tuple[FileReference, ...]
    dotenv_names: tuple[str, ...]
    nodes: int
    profiles: tuple[str, ...] = ()
    # The names of the secrets the stack references from Vault (``x-compose-agent.secrets``), unchecked.
    secret_names: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        """One hash over every file read (path and bytes) and every file found absent."""
        h = hashlib.sha256()
        for read in self.files:
            h.update(f"{read.path}\0{read.sha256}\n".encode("utf-8", "surrogateescape"))
        for path in self.absent:
            h.update(f"{path}\0-\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def paths(self) -> list[Path]:
        """Every file whose content or absence shapes the model (for a cache signature)."""
        return [read.path for read in self.files] + list(self.absent)
