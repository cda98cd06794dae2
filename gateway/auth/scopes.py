"""What a person may do: ``compose:<verb>`` scopes, optionally narrowed to one stack or one host's stack.

The grammar, one scope a string::

    compose:read                 every stack, every host
    compose:write:site           the stack "site" on the host "local" (the gateway's own engine) only
    compose:write:edge/site      the stack "site" on the host "edge" only

The verbs map onto the gateway's tool families (:mod:`gateway.auth.principals`): ``read`` covers
``list_stacks``, ``ps``, ``logs``, ``config``, ``plan`` and ``versions``; ``write`` covers ``up``,
``down``, ``restart``, ``start`` and ``stop``; ``deploy`` covers ``deploy`` and ``rollback``;
``approve`` covers the approval tools. A ``write`` or ``deploy`` scope also allows reading what it
covers: a person who may restart a stack may see it. Nothing else implies anything.

A call names no host when it means the gateway's own engine, the host ``local``. A scope
narrowed to a stack names one stack on one host: a stack name alone is the host ``local``'s, so that
a grant written before the fleet grew never reaches a stack of the same name on another engine.
Only an unnarrowed scope (``compose:write``) covers every host.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from .principals import DEPLOY_TOOLS, READ_TOOLS, WRITE_TOOLS

__all__ = [
    "APPROVE_TOOLS",
    "LOCAL_HOST",
    "PREFIX",
    "VERBS",
    "Scope",
    "ScopeError",
    "ScopeSet",
    "Verb",
    "describe",
    "granted_scopes",
    "is_name",
    "needed_scope",
    "parse_scope",
    "verb_for_tool",
]

Verb = Literal["read", "write", "deploy", "approve"]
VERBS: tuple[Verb, ...] = ("read", "write", "deploy", "approve")
PREFIX = "compose"
LOCAL_HOST = "local"
# The tools a person's approval is given with (issue 24 adds them); listed here so the verb is whole.
APPROVE_TOOLS = frozenset({"approve", "reject"})

# A stack is a compose project name; a host is a name from config.json's "hosts" (or "local").
_NAME = r"[a-z0-9][a-z0-9_-]{0,62}"
_NAME_RE = re.compile(_NAME)
_MAX_SCOPE = 160

# verb -> the verbs a scope of it also allows.
_IMPLIES: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "write": frozenset({"write", "read"}),
    "deploy": frozenset({"deploy", "read"}),
    "approve": frozenset({"approve"}),
}
_TOOL_VERBS: dict[str, Verb] = {
    **{tool: "read" for tool in READ_TOOLS},
    **{tool: "write" for tool in WRITE_TOOLS},
    **{tool: "deploy" for tool in DEPLOY_TOOLS},
    **{tool: "approve" for tool in APPROVE_TOOLS},
}


class ScopeError(ValueError):
    """A scope string that is not one of ours; the message says what a scope looks like."""


def is_name(text: str) -> bool:
    """True when ``text`` can be a stack or host name in a scope."""
    return _NAME_RE.fullmatch(text) is not None


def verb_for_tool(tool: str) -> Verb | None:
    """The verb whose scope covers ``tool``; None for a name that is no tool of the gateway."""
    return _TOOL_VERBS.get(tool)


@dataclass(frozen=True)
class Scope:
    """One scope: a verb, and the stack (and host) it is narrowed to, if any."""

    verb: Verb
    stack: str | None = None
    host: str | None = None

    def __str__(self) -> str:
        if self.stack is None:
            return f"{PREFIX}:{self.verb}"
        if self.host is None:
            return f"{PREFIX}:{self.verb}:{self.stack}"
        return f"{PREFIX}:{self.verb}:{self.host}/{self.stack}"

    @property
    def on_host(self) -> str | None:
        """The host a stack scope is on (``local`` when it names none); None for an unnarrowed scope."""
        return None if self.stack is None else (self.host or LOCAL_HOST)

    def covers(self, verb: str, stack: str | None, host: str | None) -> bool:
        """True when this scope allows ``verb`` on ``stack`` of ``host`` (None: any stack, the local host).

        A stackless action (``list_stacks``) is covered by a scope of the verb narrowed to anything:
        what it shows is filtered stack by stack afterwards.
        """
        if verb not in _IMPLIES[self.verb]:
            return False
        if stack is None or self.stack is None:
            return True
        return self.stack == stack and self.on_host == (host or LOCAL_HOST)

    def includes(self, other: Scope) -> bool:
        """True when everything ``other`` allows, this scope allows too."""
        if not _IMPLIES[other.verb] <= _IMPLIES[self.verb]:
            return False
        return self.stack is None or (self.stack == other.stack and self.on_host == other.on_host)

    def meet(self, other: Scope) -> Scope | None:
        """What both allow, as one scope with ``self``'s verb (``self`` is asked for, ``other`` held); or None.

        ``compose:write`` asked for and ``compose:write:site`` held meet as ``compose:write:site``;
        ``compose:read`` asked for and ``compose:write:site`` held as ``compose:read:site``.
        """
        if self.verb not in _IMPLIES[other.verb]:
            return None
        if self.stack is None or other.stack is None:
            narrow = other if self.stack is None else self
            return Scope(self.verb, narrow.stack, narrow.host)
        if self.stack != other.stack or self.on_host != other.on_host:
            return None
        return Scope(self.verb, self.stack, self.host or other.host)


def parse_scope(text: str) -> Scope:
    """``compose:<verb>[:<stack> | :<host>/<stack>]`` as a :class:`Scope`.

    Raises:
        ScopeError: anything else, saying what a scope looks like.
    """
    shown = text if len(text) <= 80 else text[:80] + "..."
    hint = (
        f"a scope is {PREFIX}:<verb>, {PREFIX}:<verb>:<stack> or {PREFIX}:<verb>:<host>/<stack>, "
        f"with <verb> one of {', '.join(VERBS)} (e.g. {PREFIX}:write:site)"
    )
    if not text or len(text) > _MAX_SCOPE:
        raise ScopeError(f"{shown!r} is not a scope; {hint}")
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] != PREFIX:
        raise ScopeError(f"{shown!r} is not a scope; {hint}")
    verb = parts[1]
    if verb not in VERBS:
        raise ScopeError(f"{shown!r} has an unknown verb {verb[:20]!r}; {hint}")
    if len(parts) == 2:
        return Scope(verb)
    host, slash, stack = parts[2].rpartition("/")
    rule = "lowercase letters, digits, '-' and '_', starting with a letter or digit, at most 63"
    if not _NAME_RE.fullmatch(stack):
        raise ScopeError(f"{shown!r} is not a scope: {stack[:70]!r} is not a stack name ({rule}); {hint}")
    if slash and not _NAME_RE.fullmatch(host):
        raise ScopeError(f"{shown!r} is not a scope: {host[:70]!r} is not a host name ({rule}); {hint}")
    # local/site and site are one scope: kept in the short form, so that sets stay minimal.
    return Scope(verb, stack, host if slash and host != LOCAL_HOST else None)


def describe(scope: Scope) -> str:
    """What a scope allows, in words, for the consent page and ``users list``."""
    target = "every stack" if scope.stack is None else f"the stack '{scope.stack}'"
    if scope.host is not None:
        target += f" on the host '{scope.host}'"
    return {
        "read": f"see {target}: status, logs, compose file, plans and versions",
        "write": f"bring up, down, restart, start and stop {target} (and see it)",
        "deploy": f"deploy and roll back compose files of {target} (and see it)",
        "approve": f"approve or reject changes to {target} that wait for a person",
    }[scope.verb]


class ScopeSet:
    """A set of scopes, kept minimal (a scope another one includes is dropped), and what it allows."""

    __slots__ = ("scopes",)

    def __init__(self, scopes: Iterable[Scope] = ()) -> None:
        unique = sorted(set(scopes), key=lambda s: (VERBS.index(s.verb), s.stack or "", s.host or ""))
        self.scopes: tuple[Scope, ...] = tuple(s for s in unique if not any(o != s and o.includes(s) for o in unique))

    @classmethod
    def parse(cls, texts: Iterable[str]) -> ScopeSet:
        """Every string parsed.

        Raises:
            ScopeError: the first one that is not a scope.
        """
        return cls(parse_scope(text) for text in texts)

    @classmethod
    def parse_known(cls, texts: Iterable[str]) -> ScopeSet:
        """The strings that are scopes; the others are ignored (a token's scopes came from us)."""
        found = []
        for text in texts:
            try:
                found.append(parse_scope(text))
            except ScopeError:
                continue
        return cls(found)

    def __iter__(self) -> Iterator[Scope]:
        return iter(self.scopes)

    def __len__(self) -> int:
        return len(self.scopes)

    def __bool__(self) -> bool:
        return bool(self.scopes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScopeSet) and self.scopes == other.scopes

    def __hash__(self) -> int:
        return hash(self.scopes)

    def __repr__(self) -> str:
        return f"ScopeSet({self.strings()!r})"

    def strings(self) -> list[str]:
        return [str(s) for s in self.scopes]

    def allows(self, tool: str, stack: str | None = None, host: str | None = None) -> bool:
        """True when some scope covers ``tool`` on ``stack`` of ``host`` (``list_stacks``: no stack)."""
        verb = verb_for_tool(tool)
        return verb is not None and any(s.covers(verb, stack, host) for s in self.scopes)

    def reaches_host(self, host: str) -> bool:
        """True when some scope covers a stack of ``host`` (an unnarrowed one covers every host)."""
        return any(s.stack is None or s.on_host == host for s in self.scopes)

    def tools(self) -> frozenset[str]:
        """Every tool some scope allows on some stack: the tool families the holder may call at all."""
        return frozenset(tool for tool, verb in _TOOL_VERBS.items() if any(verb in _IMPLIES[s.verb] for s in self))

    def expanded(self) -> list[Scope]:
        """These scopes and every scope they imply (``compose:write:site`` also ``compose:read:site``)."""
        return [Scope(verb, s.stack, s.host) for s in self.scopes for verb in VERBS if verb in _IMPLIES[s.verb]]

    def meet(self, held: ScopeSet) -> ScopeSet:
        """The scopes asked for here that ``held`` allows, each as narrow as both: what a token gets.

        Asking for a scope asks for what it implies too: a client that asks for ``compose:write`` of a
        person who holds only ``compose:read`` gets ``compose:read``.
        """
        return ScopeSet(m for asked in self.expanded() for have in held if (m := asked.meet(have)) is not None)

    def union(self, other: ScopeSet) -> ScopeSet:
        return ScopeSet((*self.scopes, *other.scopes))

    def without(self, scope: Scope) -> ScopeSet:
        """These scopes less ``scope`` exactly (a narrower or wider one stays)."""
        return ScopeSet(s for s in self.scopes if s != scope)


def needed_scope(tool: str, stack: str | None = None, host: str | None = None) -> str:
    """The narrowest scope that allows ``tool`` on ``stack`` (of ``host``): what a refusal names."""
    verb = verb_for_tool(tool) or "read"
    if stack is None:
        return str(Scope(verb))
    return str(Scope(verb, stack, None if host in (None, LOCAL_HOST) else host))


def granted_scopes(asked: Iterable[str] | None, held: ScopeSet) -> ScopeSet:
    """What a client's token gets: the scopes it asked for that the person holds (all of them if it asked none).

    Raises:
        ScopeError: an asked-for string that is not a scope.
    """
    if asked is None:
        return held
    return ScopeSet.parse(asked).meet(held)
