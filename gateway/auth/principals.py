"""Who may call which tool: bearer tokens mapped to a caller identity and its scopes.

Token *sources* (env, a generated file, Vault) live in :mod:`gateway.auth.tokens`; this module only
holds the current tokens and answers "whose token is this?" in constant time.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .scopes import ScopeSet  # scopes.py imports the tool families from here

__all__ = [
    "COMPOSE_AGENT",
    "STATUS_PANEL",
    "LOCAL",
    "Principal",
    "TokenStore",
    "READ_TOOLS",
    "WRITE_TOOLS",
    "DEPLOY_TOOLS",
    "scope_for",
    "ALL_TOOLS",
    "PANEL_TOOLS",
    "PRINCIPALS",
    "oauth_caller",
]

# Tool families. A scope is "tool:<name>"; a principal holds the scopes of the tools it may call.
READ_TOOLS = frozenset({"list_stacks", "ps", "logs", "config", "plan", "versions"})
WRITE_TOOLS = frozenset({"up", "down", "restart", "start", "stop"})
# Writing a stack's compose file: a family of its own, since it decides what runs at all.
DEPLOY_TOOLS = frozenset({"deploy", "rollback"})
ALL_TOOLS = READ_TOOLS | WRITE_TOOLS | DEPLOY_TOOLS
# The panel's buttons, log viewer, plans and versions list; not config, and not the deploy family.
PANEL_TOOLS = frozenset({"list_stacks", "ps", "logs", "plan", "versions", "up", "down", "restart", "start", "stop"})


def scope_for(tool: str) -> str:
    return f"tool:{tool}"


@dataclass(frozen=True)
class Principal:
    """A caller identity (never the token itself) and the tools it may call.

    An OAuth access token is a person acting through a client: ``person`` names them and
    ``scopes`` (``compose:write:site``...) narrow each call to stacks; the static tokens have neither.
    """

    name: str
    tools: frozenset[str]
    person: str | None = None
    scopes: ScopeSet | None = None

    def may_call(self, tool: str) -> bool:
        return tool in self.tools

    def may_act(self, tool: str, project: str | None = None, host: str | None = None) -> bool:
        """:meth:`may_call`, and for an OAuth token: on this stack (of this host)."""
        if self.scopes is None:
            return self.may_call(tool)
        return self.scopes.allows(tool, project, host)


def oauth_caller(client_id: str) -> str:
    """The caller an OAuth client is in the audit (the person is ``on_behalf_of``)."""
    return f"oauth:{client_id}"


# The token keys are the Vault keys and the caller identities in the audit log.
COMPOSE_AGENT = Principal("compose_agent_token", ALL_TOOLS)
STATUS_PANEL = Principal("status_panel_token", PANEL_TOOLS)
# stdio has no token: the caller is whoever started the process, with its own user's rights.
LOCAL = Principal("local", ALL_TOOLS)

PRINCIPALS: dict[str, Principal] = {p.name: p for p in (COMPOSE_AGENT, STATUS_PANEL)}


class TokenStore:
    """The tokens currently accepted, keyed by principal name (``compose_agent_token``, ``status_panel_token``).

    ``replace`` swaps the whole set at once, so a rotation never leaves a moment with neither the
    old nor the new token, and an old token stops working the moment the new set lands.
    """

    def __init__(self, tokens: Mapping[str, str] | None = None) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, bytes] = {}
        self._listeners: list[Callable[[TokenStore], None]] = []
        if tokens:
            self.replace(tokens)

    def replace(self, tokens: Mapping[str, str]) -> None:
        unknown = set(tokens) - set(PRINCIPALS)
        if unknown:
            raise ValueError(f"unknown token key(s): {', '.join(sorted(unknown))}")
        encoded = {key: value.encode() for key, value in tokens.items() if value}
        with self._lock:
            changed = encoded != self._tokens
            self._tokens = encoded
            listeners = list(self._listeners) if changed else []
        for listener in listeners:
            listener(self)

    def on_change(self, listener: Callable[[TokenStore], None]) -> None:
        """Call ``listener(store)`` after every replace that changes the tokens (a rotation)."""
        with self._lock:
            self._listeners.append(listener)

    def get(self, key: str) -> str | None:
        """The current token for ``key``, for a component that must *present* it (the status panel)."""
        with self._lock:
            value = self._tokens.get(key)
        return value.decode() if value is not None else None

    @property
    def configured(self) -> bool:
        with self._lock:
            return bool(self._tokens)

    def keys(self) -> set[str]:
        with self._lock:
            return set(self._tokens)

    def identify(self, token: str) -> Principal | None:
        """The principal whose token this is, or None. Every stored token is compared, in constant time."""
        candidate = token.encode()
        with self._lock:
            tokens = list(self._tokens.items())
        found: Principal | None = None
        for key, secret in tokens:
            # No early exit: the time taken does not say which token matched, or how much of one.
            if hmac.compare_digest(candidate, secret):
                found = PRINCIPALS[key]
        return found
