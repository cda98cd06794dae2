"""Every HTTP route of the authorization server, as one Starlette app to mount beside ``/mcp``.

The SDK's own routes do the protocol (``create_auth_routes``: ``/authorize``, ``/token``,
``/register``, ``/revoke`` and RFC 8414 metadata; ``create_protected_resource_routes``: RFC 9728
metadata). Around them, this module adds only what the SDK leaves to the server:

- the metadata says what this server does beyond the SDK's defaults: client ID metadata
  documents, ``iss`` in authorization responses (RFC 9207), public clients, and the scopes;
- error redirects from ``/authorize`` carry ``iss`` too (the consent page's always do);
- ``/token`` refuses a ``resource`` other than this server's (RFC 8707) with ``invalid_target``;
- ``/register`` takes at most :data:`REGISTRATIONS_PER_HOUR` registrations per client address;
- ``/revoke`` accepts a public client's ``client_id`` alone;
- the login and consent pages (:mod:`.pages`) and their stylesheet.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs

from mcp.server.auth.handlers.metadata import MetadataHandler
from mcp.server.auth.provider import construct_redirect_uri
from mcp.server.auth.routes import (
    AUTHORIZATION_PATH,
    REGISTRATION_PATH,
    REVOCATION_PATH,
    TOKEN_PATH,
    build_metadata,
    build_resource_metadata_url,
    cors_middleware,
    create_auth_routes,
    create_protected_resource_routes,
)
from mcp.server.auth.settings import ClientRegistrationOptions, RevocationOptions
from pydantic import AnyHttpUrl, ConfigDict, TypeAdapter
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...auth.scopes import PREFIX, VERBS
from ...ratelimit import FailureLimiter, client_key
from .bodies import read_body, replay
from .pages import LoginPages
from .provider import LOGIN_PATH, GatewayAuthorization

__all__ = [
    "OAUTH_PATHS",
    "OAUTH_PREFIXES",
    "SCOPES_SUPPORTED",
    "build_oauth_app",
    "challenge_body",
    "is_oauth_path",
    "resource_metadata_url",
]

SCOPES_SUPPORTED = [f"{PREFIX}:{verb}" for verb in VERBS]
AUTHORIZATION_SERVER_METADATA = "/.well-known/oauth-authorization-server"
REGISTRATIONS_PER_HOUR = 20
_MAX_FORM = 64 * 1024
_STATIC = Path(__file__).parent / "static"
# The issuer is compared as a string (RFC 8414, RFC 9207): "https://gw.example.com", never with a "/" added.
_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl, config=ConfigDict(url_preserve_empty_path=True))

OAUTH_PATHS = frozenset(
    {AUTHORIZATION_SERVER_METADATA, AUTHORIZATION_PATH, TOKEN_PATH, REGISTRATION_PATH, REVOCATION_PATH}
)
OAUTH_PREFIXES = ("/oauth/", "/.well-known/oauth-protected-resource")


def is_oauth_path(path: str) -> bool:
    """True for a path the authorization server answers (none of them takes a bearer token)."""
    return path in OAUTH_PATHS or path.startswith(OAUTH_PREFIXES)


def _json_error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


class _IssuerOnRedirects:
    """Adds ``iss`` (RFC 9207) to the error redirects the SDK's ``/authorize`` handler sends to a client."""

    def __init__(self, app: ASGIApp, issuer: str) -> None:
        self.app = app
        self.issuer = issuer
        self.login = issuer + LOGIN_PATH

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in (302, 303):
                headers = MutableHeaders(scope=message)
                location = headers.get("location")
                to_client = location is not None and not location.startswith(self.login)
                if location is not None and to_client and "iss" not in parse_qs(location.partition("?")[2]):
                    headers["location"] = construct_redirect_uri(location, iss=self.issuer)
            await send(message)

        await self.app(scope, receive, stamped)


class _ResourceCheck:
    """Refuses a token request whose ``resource`` is not this server (RFC 8707 ``invalid_target``)."""

    def __init__(self, app: ASGIApp, provider: GatewayAuthorization) -> None:
        self.app = app
        self.provider = provider

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body, complete, messages = await read_body(receive, _MAX_FORM)
        if complete:
            try:
                resources = parse_qs(body.decode(), max_num_fields=64).get("resource", [])
            except (UnicodeDecodeError, ValueError):
                resources = []
            if len(resources) > 1 or (resources and not self.provider.accepts_resource(resources[0])):
                await _json_error(
                    400, "invalid_target", f"this server issues tokens for {self.provider.resource} only"
                )(scope, receive, send)
                return
        await self.app(scope, replay(messages, receive), send)


class _PublicRevocation:
    """Lets a public client revoke with its ``client_id`` alone (RFC 7009), as it authenticates nowhere else.

    The SDK's revocation form requires a ``client_secret`` field even when the client has none; an
    empty one is added where it is missing (a client that has a secret is still asked for it).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body, complete, messages = await read_body(receive, _MAX_FORM)
        if complete and b"client_secret=" not in body:
            try:
                fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=64)
            except (UnicodeDecodeError, ValueError):
                fields = {}
            if fields and "client_secret" not in fields:
                body += b"&client_secret="
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
                scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
                messages = [{"type": "http.request", "body": body, "more_body": False}]
        await self.app(scope, replay(messages, receive), send)


class _RegistrationLimit:
    """At most :data:`REGISTRATIONS_PER_HOUR` client registrations per client address (bounded memory)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.counter = FailureLimiter(limit=REGISTRATIONS_PER_HOUR, window=3600.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        key = client_key(client[0] if client else None)
        wait = self.counter.retry_after(key)
        if wait is not None:
            message = "too many client registrations from this address; reuse the client you registered"
            await _json_error(429, "invalid_client_metadata", message, {"Retry-After": str(wait)})(scope, receive, send)
            return
        self.counter.record_failure(key)  # a count of registrations, not of failures
        await self.app(scope, receive, send)


def build_oauth_app(provider: GatewayAuthorization, pages: LoginPages, *, documentation: str | None = None) -> ASGIApp:
    """The authorization server's routes (see the module's docstring), as one ASGI app."""
    issuer = _URL.validate_python(provider.issuer)
    registration = ClientRegistrationOptions(enabled=True)
    revocation = RevocationOptions(enabled=True)
    docs = _URL.validate_python(documentation) if documentation else None
    metadata = build_metadata(issuer, docs, registration, revocation)
    metadata.scopes_supported = SCOPES_SUPPORTED
    metadata.client_id_metadata_document_supported = True
    metadata.authorization_response_iss_parameter_supported = True
    # Public clients (a native app, a client ID metadata document) authenticate with PKCE alone.
    metadata.token_endpoint_auth_methods_supported = ["none", "client_secret_post", "client_secret_basic"]
    metadata.revocation_endpoint_auth_methods_supported = ["none", "client_secret_post", "client_secret_basic"]
    metadata_route = Route(
        AUTHORIZATION_SERVER_METADATA,
        endpoint=cors_middleware(MetadataHandler(metadata).handle, ["GET", "OPTIONS"]),
        methods=["GET", "OPTIONS"],
    )
    routes: list[BaseRoute] = [metadata_route]
    for route in create_auth_routes(provider, issuer, docs, registration, revocation):
        if not isinstance(route, Route) or route.path == AUTHORIZATION_SERVER_METADATA:
            continue  # replaced by the fuller document above
        if route.path == AUTHORIZATION_PATH:
            route = Route(route.path, _IssuerOnRedirects(route.app, provider.issuer), methods=["GET", "POST"])
        elif route.path == TOKEN_PATH:
            route = Route(route.path, _ResourceCheck(route.app, provider), methods=["POST", "OPTIONS"])
        elif route.path == REGISTRATION_PATH:
            route = Route(route.path, _RegistrationLimit(route.app), methods=["POST", "OPTIONS"])
        elif route.path == REVOCATION_PATH:
            route = Route(route.path, _PublicRevocation(route.app), methods=["POST", "OPTIONS"])
        routes.append(route)
    routes += create_protected_resource_routes(
        _URL.validate_python(provider.resource),
        [issuer],
        scopes_supported=SCOPES_SUPPORTED,
        resource_name="compose-agent",
        resource_documentation=docs,
    )
    routes += pages.routes()
    routes.append(Mount("/oauth/static", StaticFiles(directory=_STATIC), name="oauth-static"))
    return Starlette(routes=routes)


def resource_metadata_url(resource: str) -> str:
    """Where the RFC 9728 document of ``resource`` is served (what a 401 challenge points at)."""
    return str(build_resource_metadata_url(_URL.validate_python(resource)))


def challenge_body(error: str, description: str) -> bytes:
    return json.dumps({"error": error, "error_description": description}).encode()
