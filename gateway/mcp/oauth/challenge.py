"""Bearer tokens of both kinds, and the scope challenge a client can act on before anything runs.

:class:`OAuthTokenVerifier` is the SDK's ``TokenVerifier`` when OAuth is on: the static tokens (the
panel's, the operator's) as before, then OAuth access tokens. Both are bound to this server's
resource, which the SDK's bearer middleware checks (``validate_token_resource``).

:class:`ScopeChallenge` sits in front of ``/mcp``. On the 2026-07-28 revision a ``tools/call``
names its method in the ``Mcp-Method`` header, so a call an OAuth token's scopes do not cover is
answered at the HTTP level: 403 with ``WWW-Authenticate: Bearer error="insufficient_scope",
scope="<the missing scope>"``, which a client can turn into a step-up authorization. Nothing runs,
and the refusal is audited. Earlier revisions get the same refusal as an error result (kind
``insufficient_scope``) from the tool itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.shared.inbound import MCP_METHOD_HEADER
from starlette.types import ASGIApp, Receive, Scope, Send

from ...audit import bounded_arguments
from ...auth.principals import oauth_caller
from ...auth.scopes import ScopeSet, is_name, needed_scope, verb_for_tool
from .bodies import read_body, replay
from .provider import GatewayAuthorization, GrantedAccess

__all__ = ["OAuthTokenVerifier", "ScopeChallenge", "RefusalAudit"]

logger = logging.getLogger(__name__)

# The SDK refuses larger bodies itself; a deploy's compose file is the largest thing a call carries.
_MAX_PEEK = 4 * 1024 * 1024

RefusalAudit = Callable[..., None]


class OAuthTokenVerifier:
    """Static tokens first (stamped with this resource), then the authorization server's access tokens."""

    def __init__(self, static: TokenVerifier, provider: GatewayAuthorization) -> None:
        self.static = static
        self.provider = provider
        self.resource = provider.resource

    async def verify_token(self, token: str) -> AccessToken | None:
        access = await self.static.verify_token(token)
        if access is not None:
            # Issued by the operator for this gateway: for this resource by definition.
            return access.model_copy(update={"resource": self.resource})
        return await self.provider.load_access_token(token)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            return (token.strip() or None) if kind.lower() == "bearer" else None
    return None


def _header(scope: Scope, wanted: str) -> str | None:
    key = wanted.encode()
    for name, value in scope["headers"]:
        if name == key:
            return str(value.decode("latin-1"))
    return None


def _call_of(body: bytes) -> tuple[str, str | None, str | None] | None:
    """(tool, project, host) of a single ``tools/call`` request body; None for anything else."""
    try:
        message = json.loads(body)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        return None
    params = message.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("name"), str):
        return None
    arguments: dict[str, Any] = params["arguments"] if isinstance(params.get("arguments"), dict) else {}
    project, host = arguments.get("project"), arguments.get("host")
    # Anything but a name is the tool's to refuse as invalid (and must never reach a header).
    if project is not None and not (isinstance(project, str) and is_name(project)):
        return None
    if host is not None and not (isinstance(host, str) and is_name(host)):
        return None
    return params["name"], project, host


class ScopeChallenge:
    """403 ``insufficient_scope`` for a ``tools/call`` (named in ``Mcp-Method``) outside an OAuth token's scopes."""

    def __init__(
        self, app: ASGIApp, verifier: OAuthTokenVerifier, *, resource_metadata: str, audit: RefusalAudit | None
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.resource_metadata = resource_metadata
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or _header(scope, MCP_METHOD_HEADER) != "tools/call":
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        access = await self.verifier.verify_token(token) if token else None
        if not isinstance(access, GrantedAccess):
            await self.app(scope, receive, send)  # the static tokens, or none: the SDK and the tools decide
            return
        body, complete, messages = await read_body(receive, _MAX_PEEK)
        call = _call_of(body) if complete else None
        if call is not None:
            tool, project, host = call
            scopes = ScopeSet.parse_known(access.scopes)
            if verb_for_tool(tool) is not None and not scopes.allows(tool, project, host):
                await self._refuse(access, tool, project, host, scope, send)
                return
        await self.app(scope, replay(messages, receive), send)

    async def _refuse(
        self, access: GrantedAccess, tool: str, project: str | None, host: str | None, scope: Scope, send: Send
    ) -> None:
        needed = needed_scope(tool, project, host)
        reason = (
            f"{access.subject} has not given {oauth_caller(access.client_id)} the scope {needed}, which '{tool}' "
            "needs here; authorize again asking for it (the person must hold it)"
        )
        if self.audit is not None:
            shown: dict[str, Any] = {k: v for k, v in (("project", project), ("host", host)) if v is not None}
            caller = oauth_caller(access.client_id)
            self.audit(tool[:100], bounded_arguments(shown), caller, reason, on_behalf_of=access.subject)
        challenge = (
            f'Bearer error="insufficient_scope", scope="{needed}", '
            f'resource_metadata="{self.resource_metadata}", error_description="{reason.replace(chr(34), chr(39))}"'
        )
        body = json.dumps({"error": "insufficient_scope", "error_description": reason, "scope": needed}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", challenge.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
