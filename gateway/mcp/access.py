"""Who is asking: the caller behind an MCP request, for every surface that is not a tool.

Tools, resources, prompts and completion share one rule: a caller reads only what the tools in its
scope could show it. Each non-tool read names the tool whose scope covers it (``config`` for a
compose file, ``logs`` for log lines, ``ps`` for state) and is refused exactly as that tool would be.

Some of the MCPServer's public seams are not handed the request they serve (``list_resources()``,
the ``@completion()`` function). :func:`remember_requests` installs a middleware that makes the
request being served known to them, through :func:`current_principal`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from starlette.requests import Request

from ..audit import mark_host, on_behalf_of
from ..auth.principals import (
    ALL_TOOLS,
    DEPLOY_TOOLS,
    LOCAL,
    PRINCIPALS,
    STATUS_PANEL,
    Principal,
    TokenStore,
    oauth_caller,
    scope_for,
)
from ..auth.scopes import ScopeSet, needed_scope
from ..errors import GatewayError, InsufficientScope, InvalidInput, PolicyViolation
from ..operations import ComposeOperations

__all__ = [
    "Authorized",
    "PersonScopes",
    "acting_for",
    "authorize",
    "GatewayTokenVerifier",
    "principal_from_access_token",
    "access_token_of",
    "current_principal",
    "principal_of",
    "principal_of_request",
    "remember_requests",
    "require_scope",
]

_STACK_IN_URI = re.compile(r"compose://stacks/([^/?#]+)/")
# Another host's stack: compose://stacks/{host}/{project}/{part}.
_HOST_STACK_IN_URI = re.compile(r"compose://stacks/([^/?#]+)/([^/?#]+)/(?:compose\.yaml|status|logs)(?:[?#]|$)")

# The request being served, set by the middleware for the length of its handling (one task).
_REQUEST: ContextVar[ServerRequestContext[Any, Any] | None] = ContextVar("compose_agent_request", default=None)


def access_token_of(request: object) -> AccessToken | None:
    """The verified token of the HTTP request a message came in on; on stdio, none.

    It is read off the request itself: a Streamable HTTP session runs in the context of the request
    that opened it, so the context variable could name a token that has since been rotated out.
    """
    if isinstance(request, Request):
        user = request.scope.get("user")
        if isinstance(user, AuthenticatedUser):
            return user.access_token
    return get_access_token()


def principal_of_request(request_context: ServerRequestContext[Any, Any]) -> Principal:
    """The caller behind a low-level request; ``LOCAL`` on stdio, which has no token."""
    return principal_from_access_token(access_token_of(request_context.request))


def principal_of(ctx: Context[Any, Any]) -> Principal:
    """The caller behind a request, from the MCPServer context handed to tools, resources and prompts."""
    return principal_of_request(ctx.request_context)


async def _remember_request(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    token = _REQUEST.set(ctx)
    try:
        return await call_next(ctx)
    finally:
        _REQUEST.reset(token)


def remember_requests(mcp: MCPServer) -> None:
    """Make every request ``mcp`` serves known to :func:`current_principal` (once per server)."""
    if _remember_request not in mcp.middleware:
        mcp.middleware.append(_remember_request)


def current_principal() -> Principal:
    """The caller behind the request being served; outside one, the caller of the transport (``LOCAL`` on stdio)."""
    request_context = _REQUEST.get()
    if request_context is None:
        return principal_from_access_token(get_access_token())
    return principal_of_request(request_context)


@dataclass(frozen=True)
class Authorized:
    """A call's caller, checked against the tool's scope once, and the person it says it acts for."""

    principal: Principal
    person: str | None


# What a person holds now (None: no such person), for the panel acting for one of the people.
PersonScopes = Callable[[str], ScopeSet | None]


def acting_for(principal: Principal, meta: Any) -> str | None:
    """The person a call acts for: an OAuth token's own, or the one the request's ``_meta`` names (the panel's).

    Raises:
        InvalidInput: the ``_meta`` entry is not a short printable name, or names someone other than
            the OAuth token's person.
    """
    claimed = on_behalf_of(meta)
    if principal.person is None:
        return claimed
    if claimed is not None and claimed != principal.person:  # a client cannot act for someone else
        raise InvalidInput(f"this token acts for {principal.person}; _meta may not name anyone else")
    return principal.person


def authorize(
    ops: ComposeOperations,
    ctx: Context[Any, Any],
    tool: str,
    arguments: dict[str, Any],
    *,
    people: PersonScopes | None = None,
) -> Authorized:
    """The caller of this request, if its token's scope includes ``tool``, and the person it acts for.

    ``arguments`` are what a refusal's audit line records; their ``project`` (and ``host``) is the
    stack an OAuth token's scopes must cover. With ``people``, the status panel acting for one of
    the people acts within that person's grants too.

    Raises:
        PolicyViolation: out of scope (the refusal is audited); InsufficientScope for an OAuth token,
            or the panel's person, naming the scope that would allow the call.
        InvalidInput: a malformed ``on_behalf_of`` in the request's ``_meta`` (audited too).
    """
    principal = principal_of(ctx)
    project, host = arguments.get("project"), arguments.get("host")
    if isinstance(project, str):
        # Every audit line of this call names the host it acts on, refusals included.
        mark_host(host if isinstance(host, str) else "local")
    try:
        person = acting_for(principal, ctx.request_context.meta)
    except GatewayError as exc:
        ops.audit_refusal(tool, arguments, principal.name, str(exc), on_behalf_of=principal.person)
        raise
    if not principal.may_call(tool) and principal.scopes is None:
        reason = f"the token of '{principal.name}' may not call '{tool}'; use a token whose scope includes it"
        ops.audit_refusal(tool, arguments, principal.name, reason, on_behalf_of=person)
        raise PolicyViolation(reason)
    # An OAuth token acts within its scopes, stack by stack; the panel acting for one of the
    # people, within that person's grants too.
    scopes = principal.scopes
    if scopes is None and principal.name == STATUS_PANEL.name and person is not None and people is not None:
        scopes = people(person)
    stack = project if isinstance(project, str) else None
    on_host = host if isinstance(host, str) else None
    if scopes is not None and not scopes.allows(tool, stack, on_host):
        needed = needed_scope(tool, stack, on_host)
        reason = (
            f"{person} (through '{principal.name}') does not hold the scope {needed}, which '{tool}' needs "
            "here; the operator can grant it (compose-agent users grant), then authorize again asking for it"
        )
        ops.audit_refusal(tool, arguments, principal.name, reason, on_behalf_of=person)
        raise InsufficientScope(reason, scope=needed)
    return Authorized(principal, person)


def require_scope(
    ops: ComposeOperations, principal: Principal, tool: str, what: str, arguments: dict[str, Any]
) -> None:
    """Refuse (and audit) a read the caller's scope does not cover.

    ``tool`` is the tool whose scope covers the read; ``what`` names the read in the audit line
    (``resources/read``, ``prompts/get``, ...).

    Raises:
        PolicyViolation: the caller's token may not call ``tool``.
    """
    project, host = arguments.get("project"), arguments.get("host")
    if not isinstance(project, str):
        # A stack's resource names its stack (and its host) in its URI.
        uri = str(arguments.get("uri", ""))
        remote = _HOST_STACK_IN_URI.match(uri)
        found = _STACK_IN_URI.match(uri)
        if remote is not None:
            host, project = remote.group(1), remote.group(2)
        else:
            project = found.group(1) if found else None
    if principal.may_act(tool, project, host if isinstance(host, str) else None):
        return
    reason = (
        f"the token of '{principal.name}' may not call '{tool}', so it may not read this either; "
        "use a token whose scope includes it"
    )
    ops.audit_refusal(what, arguments, principal.name, reason, on_behalf_of=principal.person)
    raise PolicyViolation(reason)


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
    return _principal(access.client_id, tuple(access.scopes), access.subject)


@functools.lru_cache(maxsize=256)
def _principal(client_id: str, scopes: tuple[str, ...], subject: str | None = None) -> Principal:
    # Once per token and scope set, not once per call: every tool call asks.
    if client_id not in PRINCIPALS:
        if subject is not None:
            # Only the authorization server's tokens name a person; their scopes are compose:*.
            held = ScopeSet.parse_known(scopes)
            return Principal(oauth_caller(client_id), held.tools(), person=subject, scopes=held)
        # An identity we did not issue gets no tools at all rather than a default.
        return Principal(client_id, frozenset())
    granted = frozenset(scope.removeprefix("tool:") for scope in scopes if scope.startswith("tool:"))
    return Principal(client_id, granted & ALL_TOOLS)
