"""Who may call which tool: bearer tokens mapped to a caller identity and its scopes.

Token *sources* (env, a generated file, Vault) live in :mod:`gateway.auth.tokens`; this module only
holds the current tokens and answers "whose token is this?" in constant time.
"""

from __future__ import annotations

import functools
import hmac
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from mcp.server.auth.provider import AccessToken

__all__ = [
    "COMPOSE_AGENT",
    "STATUS_PANEL",
    "LOCAL",
    "Principal",
    "TokenStore",
    "GatewayTokenVerifier",
    "READ_TOOLS",
    "WRITE_TOOLS",
    "DEPLOY_TOOLS",
    "scope_for",
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
    """A caller identity (never the token itself) and the tools it may call."""

    name: str
    tools: frozenset[str]

    def may_call(self, tool: str) -> bool:
        return tool in self.tools


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


class GatewayTokenVerifier:
    """The MCP SDK's ``TokenVerifier``: bearer token -> ``AccessToken`` with the principal's scopes.

    ``panel_tools`` are tools of the deploy family the operator grants the status panel's token
    too (``status_panel_tools`` in ``config.json``); by default it has none of them.
    """

    def __init__(self, store: TokenStore, *, panel_tools: Iterable[str] = ()) -> None:
        self.store = store
        self.panel_tools = frozenset(panel_tools) & DEPLOY_TOOLS

    async def verify_token(self, token: str) -> AccessToken | None:
        principal = self.store.identify(token)
        if principal is None:
            return None
        tools = principal.tools | (self.panel_tools if principal is STATUS_PANEL else frozenset())
        # The token field is required by the SDK's model; it never leaves this process.
        return AccessToken(token=token, client_id=principal.name, scopes=sorted(scope_for(t) for t in tools))


def principal_from_access_token(access: AccessToken | None) -> Principal:
    """The principal behind a verified request; ``LOCAL`` when the transport has no auth (stdio).

    Its tools are the scopes the verifier granted, which are never more than the known tools.
    """
    if access is None:
        return LOCAL
    return _principal(access.client_id, tuple(access.scopes))


@functools.lru_cache(maxsize=64)
def _principal(client_id: str, scopes: tuple[str, ...]) -> Principal:
    # Once per token and scope set, not once per call: every tool call asks.
    if client_id not in PRINCIPALS:
        # An identity we did not issue gets no tools at all rather than a default.
        return Principal(client_id, frozenset())
    granted = frozenset(scope.removeprefix("tool:") for scope in scopes if scope.startswith("tool:"))
    return Principal(client_id, granted & ALL_TOOLS)
