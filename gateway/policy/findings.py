"""What the judge knows about a stack's surroundings, and what it finds: the context and the collector.

:class:`Context` is the judge's input beside the stack's files and model: whose stack it is, the
operator's policy, and the neighbourhood the stack must not reach into (other projects' names, the
gateway's own project, and an engine lookup of who owns an existing resource). :class:`Findings`
collects violations as the model is walked, resolves host paths once, and remembers where each
resolved, so that a kept verdict can be re-checked with a few ``stat`` calls.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..models import Violation
from .rules import DEFAULT_SOCKETS, Policy
from .strict_yaml import CONTROL_CHARACTERS

__all__ = ["At", "Check", "Context", "Findings", "JudgeError", "OwnerLookup", "entries", "inside", "namespace_owner"]

OwnerLookup = Callable[[str, str], "str | None"]
"""``(kind, engine name) -> owner``: the ``com.docker.compose.project`` label of the existing volume,
network, secret, config or container of that name (``""`` when it has none), or None when none
exists. ``kind`` is ``volume``, ``network``, ``secret``, ``config`` or ``container``. Blocking: the
judge runs in a worker thread, and calls it only for the names the model uses."""


class JudgeError(Exception):
    """The model cannot be judged (a control character in a path, name or label); ``code`` names why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Context:
    """The judge's input beside the files and the model.

    ``neighbours`` are the other projects whose names a stack must not take: the stack folders
    beside it and the compose projects running on the engine. ``owners`` looks up who owns an
    existing resource (phase 2 gives the engine's answer; without it only names are judged).
    """

    stack: str
    folder: Path
    policy: Policy
    sockets: tuple[str, ...] = DEFAULT_SOCKETS
    neighbours: frozenset[str] = frozenset()
    self_project: str | None = None
    owners: OwnerLookup | None = None
    swarm: bool = False


class At(NamedTuple):
    """Where a value sits: its service (None at the top level), its concrete path, and its own key."""

    service: str | None
    path: str
    key: str


Check = Callable[["Findings", At, Any], None]


def inside(path: str, root: str) -> bool:
    """True when ``path`` is ``root`` or below it (both already resolved)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def namespace_owner(name: str, stack: str, others: Iterable[str], separators: str = "_") -> str | None:
    """The project whose namespace ``name`` falls in: the longest project name it equals or starts with
    (followed by one of ``separators``), among ``stack`` and ``others``; None when it is in none.

    Longest wins: for stacks ``a`` and ``a_b``, ``a_b_data`` is ``a_b``'s even though it starts with ``a_``.
    """
    best: str | None = None
    for project in (stack, *others):
        if project and (
            name == project or (name.startswith(project) and name[len(project) : len(project) + 1] in separators)
        ):
            if best is None or len(project) > len(best):
                best = project
    return best


def entries(value: Any) -> Iterator[tuple[str, Any]]:
    """The entries of a list-or-dict value (labels, options) as (key, value) pairs."""
    if isinstance(value, dict):
        yield from ((str(k), v) for k, v in value.items())
    elif isinstance(value, list | str):
        for entry in value if isinstance(value, list) else [value]:
            key, _, rest = str(entry).partition("=")
            yield key, rest


@dataclass
class Findings:
    """Violations found so far, and every host path judged with where it resolved."""

    context: Context
    folder: str = ""
    found: list[Violation] = field(default_factory=list)
    resolved: dict[str, str] = field(default_factory=dict)
    _owners: dict[tuple[str, str], str | None] = field(default_factory=dict)
    _socket_cache: tuple[tuple[str, ...], frozenset[tuple[int, int]]] | None = None
    _roots: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self.folder = os.path.realpath(self.context.folder)

    @property
    def stack(self) -> str:
        return self.context.stack

    def add(self, rule: str, service: str | None, value: str) -> None:
        """Record a violation of ``rule``, unless the operator allows it for this stack."""
        policy = self.context.policy
        if policy.allows(self.stack, rule):
            return
        allow = f'"{rule}" in policy.stacks.{self.stack}.allow'
        if rule == "host_bind":
            allow = f"a root in policy.allowed_bind_roots, or {allow}"
        elif rule == "unknown_key":
            allow = f"the key in policy.stacks.{self.stack}.allow_keys, or {allow}"
        elif rule == "vault_paths":
            allow = f"the path in policy.stacks.{self.stack}.secret_paths, or {allow}"
        elif rule.startswith("external_") or rule == "namespace":
            allow = f"the name in policy.stacks.{self.stack}.resources, or {allow}"
        violation = Violation(rule=rule, service=service, value=value, allow=allow)
        if violation not in self.found:
            self.found.append(violation)

    def clean(self, what: str, text: str) -> str:
        """``text`` if it holds no control character, for a path, name or label.

        Raises:
            JudgeError: it does; the stack cannot be judged (and a NUL would break every path call).
        """
        if CONTROL_CHARACTERS.search(text):
            raise JudgeError("control_characters", f"{what} {text[:80]!r} holds a control character")
        return text

    def real(self, path: str) -> str:
        absolute = path if os.path.isabs(path) else os.path.join(self.folder, path)
        real = os.path.realpath(absolute)
        self.resolved[absolute] = real
        return real

    def touches_socket(self, real: str) -> bool:
        """True when ``real`` is a runtime socket, or a folder holding one (so a bind would expose it)."""
        sockets, inodes = self._sockets()
        if any(inside(socket, real) for socket in sockets):
            return True
        try:
            st = os.stat(real)
        except OSError:
            return False
        return stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) in inodes

    def _sockets(self) -> tuple[tuple[str, ...], frozenset[tuple[int, int]]]:
        """Where the runtime's sockets resolve, and their (device, inode): looked up once per judgement."""
        if self._socket_cache is None:
            inodes = set()
            for socket in self.context.sockets:
                try:
                    st = os.stat(socket)
                except OSError:
                    continue
                inodes.add((st.st_dev, st.st_ino))
            reals = tuple(os.path.realpath(socket) for socket in self.context.sockets)
            self._socket_cache = (reals, frozenset(inodes))
        return self._socket_cache

    def host_path(self, service: str | None, what: str, path: str, *, outside_rule: str = "host_bind") -> None:
        """A host path mounted into a container: never the socket, else inside the folder or an allowed root."""
        self.clean(what, path)
        real = self.real(path)
        shown = path if real == path else f"{path} (resolves to {real})"
        if self.touches_socket(real):
            self.add("docker_socket", service, f"{what} {shown} exposes the container runtime's socket")
        if inside(real, self.folder):
            return
        if self._roots is None:
            self._roots = tuple(os.path.realpath(root) for root in self.context.policy.allowed_bind_roots)
        if any(inside(real, root) for root in self._roots):
            return
        self.add(outside_rule, service, f"{what} {shown} is outside the stack folder")

    def file(self, service: str | None, what: str, path: str, written: str | None = None) -> None:
        """A file Compose or the builder reads on the host: only inside the stack folder."""
        self.clean(what, path)
        real = self.real(path)
        if not inside(real, self.folder):
            shown = written or path
            shown = shown if real == shown else f"{shown} (resolves to {real})"
            self.add("outside_files", service, f"{what} {shown} is outside the stack folder")

    def others(self) -> tuple[str, ...]:
        """The projects whose namespaces this stack must stay out of."""
        own = self.context.self_project
        return tuple(sorted(self.context.neighbours | ({own} if own else set()) - {self.stack}))

    def owner(self, kind: str, name: str) -> str | None:
        """Who owns the existing resource ``name`` (see :data:`OwnerLookup`); None when unknown or absent."""
        lookup = self.context.owners
        if lookup is None:
            return None
        key = (kind, name)
        if key not in self._owners:
            self._owners[key] = lookup(kind, name)
        return self._owners[key]

    def named(self, rule: str, kind: str, key: str, name: str, *, external: bool = False) -> None:
        """A named engine resource the stack uses: its own, never another project's or one it did not create.

        ``key`` is the model's key, ``name`` the engine name Compose gives it.
        """
        self.clean(f"{kind} name", name)
        if name in self.context.policy.resources_of(self.stack):
            return
        if external:
            self.add(rule, None, f"{kind} '{key}' is external ({name}): the stack did not create it")
            return
        owner = namespace_owner(name, self.stack, self.others())
        if owner != self.stack:
            whose = f"inside {owner}'s namespace" if owner else "outside the stack's namespace"
            self.add(rule, None, f"{kind} '{key}' is named {name}, {whose}")
            return
        label = self.owner(kind, name)
        if label is not None and label != self.stack:
            whose = f"project {label}" if label else "no compose project (it was created outside Compose)"
            self.add(rule, None, f"{kind} '{key}' is named {name}, which exists and belongs to {whose}")
