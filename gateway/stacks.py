"""Stacks are addressed by name, never by path.

A stack is a folder under the stacks dir that holds a compose file; its name is the folder name,
which is also the compose project name. Nothing here accepts a path from a caller: names are
validated against a strict pattern before they are joined to the stacks dir. A folder that is a
symbolic link is no stack (its target could be anywhere on the host); what the gateway reads and
writes inside stack folders goes through :mod:`gateway.folders`, never through a link.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidInput, PolicyViolation

__all__ = [
    "COMPOSE_FILENAMES",
    "PROJECT_NAME_RULE",
    "Stack",
    "discover_stacks",
    "find_stack",
    "validate_project_name",
    "validate_services",
]

logger = logging.getLogger(__name__)

COMPOSE_FILENAMES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
PROJECT_NAME_RULE = "^[a-z0-9][a-z0-9_-]*$"
_PROJECT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# The Compose spec's service names; dots allowed, no slashes, so never a path.
_SERVICE_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
# Stack folders that are links, already warned about by discovery.
_refused: set[tuple[Path, str]] = set()


@dataclass(frozen=True)
class Stack:
    """A stack the gateway can act on. ``folder`` is None for an external (folder-less) project."""

    name: str
    folder: Path | None = None
    compose_file: Path | None = None

    @property
    def external(self) -> bool:
        return self.folder is None


def validate_project_name(name: object) -> str:
    """Return ``name`` if it is a valid stack name.

    Raises:
        InvalidInput: quoting the rule, so the caller knows what to send instead.
    """
    if not isinstance(name, str) or not _PROJECT_RE.fullmatch(name):
        shown = repr(name)[:80]
        raise InvalidInput(
            f"invalid stack name {shown}: a stack is named by its folder, matching {PROJECT_NAME_RULE} "
            "(lowercase letters, digits, '-' and '_', at most 63 characters); paths are not accepted"
        )
    return name


def validate_services(services: Iterable[str] | None) -> list[str] | None:
    """Validate an optional list of service names; an empty list means "all", like None."""
    if services is None:
        return None
    result = []
    for service in services:
        if not isinstance(service, str) or not _SERVICE_RE.fullmatch(service):
            raise InvalidInput(
                f"invalid service name {str(service)[:80]!r}: service names match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
            )
        if service not in result:
            result.append(service)
    return result or None


def find_stack(stacks_dir: Path, name: str) -> Stack | None:
    """The stack folder called ``name`` (already validated), without listing the whole stacks dir.

    A stat per candidate file, as every ps does: the paths are built once per name, not each time.
    A folder that is a symbolic link is no stack: under it, the folder's relative binds, its files
    and what ``deploy`` writes would all be the link's target, anywhere on the host.

    Raises:
        PolicyViolation: the stack folder is a symbolic link (the message never says where it points).
    """
    folder, candidates = _candidates(stacks_dir, name)
    try:
        mode = os.lstat(folder).st_mode
    except OSError:
        return None
    if stat.S_ISLNK(mode):
        raise PolicyViolation(
            f"stack '{name}' is refused: its folder under the stacks dir is a symbolic link, and the gateway "
            "follows no link out of the stacks dir; put the folder itself there"
        )
    if not stat.S_ISDIR(mode):
        return None
    for candidate in candidates:
        if os.path.isfile(candidate):
            return Stack(name, folder, candidate)
    return None


@functools.lru_cache(maxsize=1024)
def _candidates(stacks_dir: Path, name: str) -> tuple[Path, tuple[Path, ...]]:
    folder = stacks_dir / name
    return folder, tuple(folder / filename for filename in COMPOSE_FILENAMES)


def discover_stacks(stacks_dir: Path) -> dict[str, Stack]:
    """Every folder under ``stacks_dir`` with a compose file and a valid name, by name.

    A missing stacks dir is not an error: external projects can still be managed.
    """
    stacks: dict[str, Stack] = {}
    try:
        entries = sorted(stacks_dir.iterdir())
    except FileNotFoundError:
        return stacks
    except NotADirectoryError:
        logger.warning("the stacks dir %s is not a directory", stacks_dir)
        return stacks
    for entry in entries:
        if not _PROJECT_RE.fullmatch(entry.name):
            continue
        try:
            stack = find_stack(stacks_dir, entry.name)
        except PolicyViolation as exc:
            # Not listed, so nothing reads it; said once, not on every listing.
            if (stacks_dir, entry.name) not in _refused:
                _refused.add((stacks_dir, entry.name))
                logger.warning("%s", exc)
            continue
        if stack is not None:
            stacks[entry.name] = stack
    return stacks
