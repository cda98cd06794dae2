"""Everything the gateway needs to be an OAuth 2.1 authorization and resource server, from its settings.

    oauth = await build_oauth(settings, static=GatewayTokenVerifier(store), people=people)
    server = build_server(ops, token_verifier=oauth.verifier, issuer_url=oauth.issuer,
                          resource_server_url=oauth.resource, ...)
    app = build_http_app(server, ops, oauth_app=oauth.app, guard=oauth.guard(ops.audit_refusal), ...)

with ``oauth.background`` run for the app's lifetime, and ``oauth.identify`` beside the static
tokens in the HTTP edge's per-token limits. The issuer is the public URL (``--public-url``), the
resource its ``/mcp``. Grants are kept in ``<state dir>/oauth.json``, or in Vault beside the
tokens (``secret/{prefix}/{DEPLOYMENT_HASH}/oauth``) when Vault is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from mcp.server.auth.provider import TokenVerifier
from starlette.types import ASGIApp

from ...auth.documents import Document, FileDocument, VaultDocument
from ...auth.people import People
from ...auth.vault import VaultClient
from ...config import Settings
from ...errors import ConfigError
from .challenge import OAuthTokenVerifier, RefusalAudit, ScopeChallenge
from .clients import Clients, MetadataDocuments
from .grants import Grants
from .pages import LoginPages
from .provider import GatewayAuthorization
from .routes import build_oauth_app, resource_metadata_url

__all__ = ["OAuthServer", "build_oauth", "OAUTH_FILE", "OAUTH_KEY"]

logger = logging.getLogger(__name__)

OAUTH_FILE = "oauth.json"
OAUTH_KEY = "oauth"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class OAuthServer:
    """The parts of the authorization server the gateway's entry point wires in (see the module docstring)."""

    issuer: str
    resource: str
    provider: GatewayAuthorization
    verifier: OAuthTokenVerifier
    app: ASGIApp
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    vault: VaultClient | None = None

    @property
    def resource_metadata(self) -> str:
        return resource_metadata_url(self.resource)

    def identify(self, token: str) -> str | None:
        """``person@client`` for a live OAuth access token (the HTTP edge's per-caller key); else None."""
        return self.provider.identify(token)

    def guard(self, audit: RefusalAudit | None) -> Callable[[ASGIApp], ASGIApp]:
        """Wraps ``/mcp`` in the scope challenge (403 ``insufficient_scope`` on the 2026-07-28 revision)."""

        def wrap(app: ASGIApp) -> ASGIApp:
            return ScopeChallenge(app, self.verifier, resource_metadata=self.resource_metadata, audit=audit)

        return wrap

    def close(self) -> None:
        if self.vault is not None:
            self.vault.close()


def grants_document(settings: Settings, vault: VaultClient | None) -> Document:
    if vault is not None:
        if not settings.deployment_hash:
            raise ConfigError("VAULT_ADDRESS is set but DEPLOYMENT_HASH is not; it names where OAuth grants are kept")
        return VaultDocument(vault, settings.deployment_hash, OAUTH_KEY)
    return FileDocument(settings.state_dir / OAUTH_FILE)


async def build_oauth(settings: Settings, *, static: TokenVerifier, people: People) -> OAuthServer:
    """The authorization server for ``settings.public_url``, its grants loaded from where the last run left them.

    Raises:
        ConfigError: no public URL, or Vault without ``DEPLOYMENT_HASH``.
        GatewayError: the stored grants cannot be read (Vault down, a malformed file).
    """
    if not settings.public_url:
        raise ConfigError("OAuth needs the gateway's public URL: --public-url or COMPOSE_AGENT_PUBLIC_URL")
    issuer = settings.public_url
    resource = f"{issuer}/mcp"
    vault = VaultClient.from_settings(settings) if settings.vault_address else None
    try:
        grants = Grants(grants_document(settings, vault))
        await grants.load()
    except Exception:
        if vault is not None:
            vault.close()
        raise
    # On loopback every party is this machine: a client's metadata document may be served there too.
    local = urlsplit(issuer).hostname in _LOOPBACK
    clients = Clients(grants, MetadataDocuments(allow_private=local))
    provider = GatewayAuthorization(issuer=issuer, resource=resource, grants=grants, clients=clients, people=people)
    pages = LoginPages(provider, secure_cookie=issuer.startswith("https://"))
    app = build_oauth_app(provider, pages)
    logger.info("OAuth: authorization server at %s for %s", issuer, resource)
    return OAuthServer(
        issuer=issuer,
        resource=resource,
        provider=provider,
        verifier=OAuthTokenVerifier(static, provider),
        app=app,
        background=[provider.upkeep_forever],
        vault=vault,
    )
