"""OAuth clients: registered dynamically (RFC 7591), or named by the URL of their metadata document.

A client ID metadata document is JSON a client publishes at an ``https://`` URL that is its client
ID; the authorization server fetches it to learn the client's name and redirect URIs, so no
registration is needed (Claude and ChatGPT use them). Fetching a URL a stranger names is a
server-side request forgery risk, so a fetch:

- goes to ``https://`` only, certificate checked, no redirects followed, at most 5 KB, within 5 s;
- only to public addresses, unless the gateway itself is on loopback (a development setup, where
  every party is this machine); the name is resolved first and every address checked. A name
  that resolves differently at connect time still cannot reach an inside service: the TLS
  certificate must be valid for the attacker's name, which no inside service presents.
- is cached (a failure too), so naming a victim's URL over and over costs it one fetch a minute.

Every client is public or holds a secret; ``private_key_jwt`` is refused (no keys are held here).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
from mcp.server.auth.provider import RegistrationError
from mcp.shared.auth import InvalidScopeError, OAuthClientInformationFull
from pydantic import AnyUrl, ValidationError

from ...auth.scopes import ScopeError, parse_scope
from .grants import ClientRecord, Grants

__all__ = ["GatewayClient", "Clients", "MetadataDocuments", "is_metadata_url", "check_redirect_uri"]

logger = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 5 * 1024
FETCH_TIMEOUT = 5.0
CACHE_SECONDS = 300.0
FAILURE_CACHE_SECONDS = 60.0
MAX_CACHED = 1000
MAX_CLIENTS = 10_000
# A registration never used for a token is forgotten after a day; a used one after 90 days unused.
UNUSED_FOR = 24 * 3600
IDLE_FOR = 90 * 24 * 3600
_AUTH_METHODS = ("none", "client_secret_post", "client_secret_basic")
_FORBIDDEN_SCHEMES = frozenset({"javascript", "data", "file", "vbscript", "about", "blob", "ftp", "ws", "wss"})


def is_metadata_url(client_id: str) -> bool:
    """True for a client ID that is the URL of a client ID metadata document (https, with a path)."""
    parts = urlsplit(client_id)
    return parts.scheme == "https" and bool(parts.hostname) and parts.path not in ("", "/")


class GatewayClient(OAuthClientInformationFull):
    """A client as the SDK's handlers see it; scopes are judged by their grammar, not by a registered list.

    What a token finally gets is decided at consent (the scopes the person holds); a client need not
    have registered ``compose:write:site`` beforehand to ask for it.
    """

    def validate_scope(self, requested_scope: str | None) -> list[str] | None:
        if requested_scope is None:
            return None
        scopes = [s for s in requested_scope.split(" ") if s]
        for scope in scopes:
            try:
                parse_scope(scope)
            except ScopeError as exc:
                raise InvalidScopeError(str(exc)) from None
        return scopes or None


def check_redirect_uri(uri: str, *, loopback_only_http: bool = True) -> str | None:
    """Why ``uri`` cannot be a redirect URI, or None when it can.

    Allowed: ``https://``, ``http://`` to a loopback address (native apps, RFC 8252), and a
    private-use scheme such as ``cursor://`` (RFC 8252 7.1). Never a fragment, never a scheme a
    browser would run or read locally.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if parts.fragment or "#" in uri:
        return "a redirect URI may not have a fragment"
    if not scheme or scheme in _FORBIDDEN_SCHEMES:
        return f"the scheme {scheme or '(none)'!r} is not allowed in a redirect URI"
    if scheme == "http":
        host = (parts.hostname or "").lower()
        if loopback_only_http and host not in ("localhost", "127.0.0.1", "::1"):
            return "a plain http:// redirect URI must go to a loopback address (127.0.0.1, ::1, localhost)"
    elif scheme == "https":
        if not parts.hostname:
            return "an https:// redirect URI needs a host"
    elif "." not in scheme and len(scheme) < 3:
        return f"the scheme {scheme!r} is not a private-use scheme (RFC 8252: a reverse domain name, e.g. com.example)"
    return None


def _validated_scope(scope: str | None) -> str | None:
    if scope is None:
        return None
    try:
        for item in scope.split(" "):
            if item:
                parse_scope(item)
    except ScopeError as exc:
        raise RegistrationError("invalid_client_metadata", str(exc)) from None
    return scope


def _check_client(info: OAuthClientInformationFull) -> None:
    """Raises RegistrationError for a client this server could not serve safely."""
    if info.token_endpoint_auth_method not in _AUTH_METHODS:
        raise RegistrationError(
            "invalid_client_metadata",
            f"token_endpoint_auth_method must be one of {', '.join(_AUTH_METHODS)}",
        )
    if not info.redirect_uris:
        raise RegistrationError("invalid_redirect_uri", "at least one redirect URI is required")
    if len(info.redirect_uris) > 10:
        raise RegistrationError("invalid_redirect_uri", "at most 10 redirect URIs")
    for uri in info.redirect_uris:
        problem = check_redirect_uri(str(uri))
        if problem is not None:
            raise RegistrationError("invalid_redirect_uri", problem)
    _validated_scope(info.scope)
    if info.client_name is not None and (len(info.client_name) > 100 or not info.client_name.isprintable()):
        raise RegistrationError("invalid_client_metadata", "client_name must be 1 to 100 printable characters")


@dataclass
class _Cached:
    client: GatewayClient | None
    until: float


class MetadataDocuments:
    """Client ID metadata documents, fetched safely and cached."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        timeout: float = FETCH_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allow_private = allow_private
        self.timeout = timeout
        self.clock = clock
        self._cache: dict[str, _Cached] = {}
        self._limiter = anyio.CapacityLimiter(4)

    async def get(self, url: str) -> GatewayClient | None:
        """The client the document at ``url`` describes; None when it cannot be had or is not valid."""
        cached = self._cache.get(url)
        if cached is not None and cached.until > self.clock():
            return cached.client
        async with self._limiter:
            client = await self._fetch(url)
        if len(self._cache) >= MAX_CACHED:
            self._cache.pop(next(iter(self._cache)))
        ttl = CACHE_SECONDS if client is not None else FAILURE_CACHE_SECONDS
        self._cache[url] = _Cached(client, self.clock() + ttl)
        return client

    async def _fetch(self, url: str) -> GatewayClient | None:
        try:
            await self._check_addresses(url)
            async with httpx2.AsyncClient(timeout=self.timeout, follow_redirects=False) as http:
                async with http.stream("GET", url, headers={"Accept": "application/json"}) as response:
                    if response.status_code != 200:
                        raise ValueError(f"it answered HTTP {response.status_code}")
                    body = b""
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_DOCUMENT_BYTES:
                            raise ValueError(f"it is larger than {MAX_DOCUMENT_BYTES} bytes")
            return _client_from_document(url, json.loads(body))
        except (ValueError, OSError, httpx2.HTTPError, RegistrationError, ValidationError) as exc:
            reason = exc.error_description if isinstance(exc, RegistrationError) else str(exc) or type(exc).__name__
            logger.warning("OAuth: refused the client metadata document at %s: %s", url[:200], reason)
            return None

    async def _check_addresses(self, url: str) -> None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        infos = await anyio.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if not address.is_global and not self.allow_private:
                raise ValueError(f"{host} resolves to {address}, which is not a public address")


def _client_from_document(url: str, document: Any) -> GatewayClient:
    """Raises ValueError, RegistrationError or ValidationError for a document that is not a valid client."""
    if not isinstance(document, dict):
        raise ValueError("it is not a JSON object")
    if document.get("client_id") != url:
        raise ValueError("its client_id is not the URL it was fetched from")
    method = document.get("token_endpoint_auth_method", "none")
    if method != "none":
        raise RegistrationError("invalid_client_metadata", "only public clients (token_endpoint_auth_method none)")
    redirect_uris = document.get("redirect_uris")
    if not isinstance(redirect_uris, list) or not all(isinstance(u, str) for u in redirect_uris):
        raise ValueError("redirect_uris is not a list of URLs")
    name = document.get("client_name")
    client = GatewayClient(
        client_id=url,
        client_name=name if isinstance(name, str) else None,
        client_uri=document.get("client_uri") if isinstance(document.get("client_uri"), str) else None,
        redirect_uris=[AnyUrl(u) for u in redirect_uris],
        token_endpoint_auth_method="none",
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        scope=_validated_scope(document.get("scope") if isinstance(document.get("scope"), str) else None),
    )
    _check_client(client)
    return client


class Clients:
    """Where the provider finds clients: registered ones in the grants, metadata documents by URL."""

    def __init__(self, grants: Grants, documents: MetadataDocuments, *, max_clients: int = MAX_CLIENTS) -> None:
        self.grants = grants
        self.documents = documents
        self.max_clients = max_clients

    async def get(self, client_id: str) -> GatewayClient | None:
        if len(client_id) > 2048:
            return None
        if is_metadata_url(client_id):
            return await self.documents.get(client_id)
        record = self.grants.clients.get(client_id)
        if record is None:
            return None
        return GatewayClient.model_validate(record.info)

    def mark_used(self, client_id: str) -> None:
        record = self.grants.clients.get(client_id)
        if record is not None:
            record.used = self.grants.clock()

    async def register(self, info: OAuthClientInformationFull) -> None:
        """Keep a dynamically registered client (the SDK's handler made its id and secret).

        Raises:
            RegistrationError: a client this server will not serve, or too many clients.
        """
        _check_client(info)
        if len(self.grants.clients) >= self.max_clients:
            self._forget_stale()
        if len(self.grants.clients) >= self.max_clients:
            raise RegistrationError(
                "invalid_client_metadata", "this gateway holds too many registered clients; try again tomorrow"
            )
        now = self.grants.clock()
        self.grants.clients[info.client_id] = ClientRecord(info.model_dump(mode="json", exclude_none=True), now)
        await self.grants.save()
        logger.info("OAuth: registered client %s (%s)", info.client_id, (info.client_name or "no name")[:100])

    def _forget_stale(self) -> None:
        now = self.grants.clock()
        live = {t.client_id for t in self.grants.tokens.values()}
        for client_id, record in list(self.grants.clients.items()):
            if client_id in live:
                continue
            idle = now - (record.used or record.registered)
            if idle > (IDLE_FOR if record.used else UNUSED_FOR):
                del self.grants.clients[client_id]
