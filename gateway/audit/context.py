"""What an audit line carries beside the call's own fields, and how a caller's arguments are bounded.

Context variables set around a call (its tags, the approval step it serves) reach every line the
call writes, worker threads included; the person a client acts for is read from the request's
``_meta`` here, once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput

__all__ = [
    "ON_BEHALF_OF_META_KEY",
    "ApprovalStep",
    "approval_step",
    "bounded_arguments",
    "call_tags",
    "current_approval",
    "current_host",
    "current_tags",
    "mark_approval",
    "mark_host",
    "on_behalf_of",
    "on_behalf_of_meta",
]

# Where a client that acts for a person (the status panel) names them, in the MCP request's `_meta`.
# It is the caller's claim, recorded beside the caller's own identity, never in place of it.
ON_BEHALF_OF_META_KEY = "compose-agent/on_behalf_of"
_MAX_PERSON = 128

_MAX_TEXT = 200
_MAX_ITEMS = 20

# What a call carries beside its arguments (its idempotency key and attempt, its task), set
# around the call and added to its intent line: one key's intents can then be found and counted.
_CALL_TAGS: ContextVar[dict[str, Any] | None] = ContextVar("compose_agent_call_tags", default=None)


@contextmanager
def call_tags(**tags: Any) -> Iterator[None]:
    """Add ``tags`` (JSON values) to the intent lines written inside the block (worker threads too)."""
    token = _CALL_TAGS.set({**(_CALL_TAGS.get() or {}), **tags})
    try:
        yield
    finally:
        _CALL_TAGS.reset(token)


def current_tags() -> dict[str, Any] | None:
    """The tags of the call being served, if any."""
    return _CALL_TAGS.get()


@dataclass(frozen=True)
class ApprovalStep:
    """Which approval a line belongs to, and which step of its chain it records."""

    id: str
    step: str


# The approval step of the call being served: every line written for it carries it. Each
# request is served in a task of its own, so a step set for one call never reaches another.
_APPROVAL_STEP: ContextVar[ApprovalStep | None] = ContextVar("compose_agent_approval_step", default=None)


def mark_approval(approval_id: str, step: str) -> None:
    """From now on, in this call, audit lines belong to ``approval_id`` at ``step``."""
    _APPROVAL_STEP.set(ApprovalStep(approval_id, step))


@contextmanager
def approval_step(approval_id: str, step: str) -> Iterator[None]:
    """The lines written inside belong to ``approval_id`` at ``step``."""
    token = _APPROVAL_STEP.set(ApprovalStep(approval_id, step))
    try:
        yield
    finally:
        _APPROVAL_STEP.reset(token)


def current_approval() -> ApprovalStep | None:
    """The approval step of the call being served, if any."""
    return _APPROVAL_STEP.get()


# The host the call being served acts on; every line written for it names it.
_HOST: ContextVar[str | None] = ContextVar("compose_agent_host", default=None)


def mark_host(host: str) -> None:
    """From now on, in this call, audit lines name ``host``."""
    _HOST.set(host)


def current_host() -> str | None:
    """The host of the call being served, if it named one (``local`` included)."""
    return _HOST.get()


def on_behalf_of(meta: Mapping[str, Any] | None) -> str | None:
    """The person a request's ``_meta`` says the caller acts for; None when it names no one.

    Raises:
        InvalidInput: the value is not a name of 1 to 128 printable characters.
    """
    if not meta or ON_BEHALF_OF_META_KEY not in meta:
        return None
    value = meta[ON_BEHALF_OF_META_KEY]
    if not isinstance(value, str) or not 1 <= len(value) <= _MAX_PERSON or not value.isprintable():
        raise InvalidInput(
            f"_meta[{ON_BEHALF_OF_META_KEY!r}] must name a person in 1 to {_MAX_PERSON} printable characters"
        )
    return value


def on_behalf_of_meta(person: str) -> dict[str, Any]:
    """The request ``_meta`` that names ``person`` as the one the caller acts for."""
    return {ON_BEHALF_OF_META_KEY: person}


def bounded_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a caller's arguments that is safe to log whatever they were: short and JSON-able.

    Strings are cut at 200 characters, lists and objects at 20 entries (with the full count), so a
    refused call with 1,000 service names or a 1 MB string leaves a line of bounded size.
    """
    return {str(key)[:_MAX_TEXT]: _bounded(value) for key, value in list(arguments.items())[:_MAX_ITEMS]}


def _bounded(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if len(value) <= _MAX_TEXT else value[:_MAX_TEXT] + f"...({len(value)} chars)"
    if depth >= 2:
        return f"<{type(value).__name__}>"
    if isinstance(value, list | tuple):
        items = [_bounded(v, depth + 1) for v in value[:_MAX_ITEMS]]
        return items if len(value) <= _MAX_ITEMS else [*items, f"...({len(value)} items)"]
    if isinstance(value, Mapping):
        return {str(k)[:_MAX_TEXT]: _bounded(v, depth + 1) for k, v in list(value.items())[:_MAX_ITEMS]}
    return f"<{type(value).__name__}>"
