"""The authorization server, on the MCP SDK's provider interface: who may get which token, and for how long.

The SDK's handlers (``/authorize``, ``/token``, ``/register``, ``/revoke``) parse and check each
request (PKCE S256, redirect URI, client authentication) and ask this provider the questions only
the gateway can answer:

- ``authorize``: the client's request is parked (:mod:`.pending`) and the browser sent to our login
  page; the code is made on the consent page (:meth:`issue_code`) for the scopes the client asked
  for that the person holds.
- codes and tokens are bound to this server's resource (RFC 8707); a request naming another
  resource is refused with ``invalid_target``.
- each use re-checks the person: one who was removed gets nothing, and one whose grants shrank
  gets no more than they now hold, from the next request on (people are re-read every second).
- refresh tokens rotate; a code or refresh token presented twice ends its whole family.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import anyio
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    AuthorizeError,
    OAuthAuthorizationServerProvider,
    RefreshToken,
    TokenError,
)
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from mcp.shared.auth_utils import resource_url_from_server_url
from pydantic import AnyUrl

from ...auth.people import People
from ...auth.scopes import ScopeSet
from .clients import Clients
from .grants import CodeRecord, Grants, TokenRecord, digest, new_secret
from .pending import Pending, PendingRequests

__all__ = ["GatewayAuthorization", "StoredCode", "StoredRefresh", "GrantedAccess", "LOGIN_PATH", "CONSENT_PATH"]

logger = logging.getLogger(__name__)

LOGIN_PATH = "/oauth/login"
CONSENT_PATH = "/oauth/consent"
ACCESS_SECONDS = 3600
REFRESH_SECONDS = 30 * 24 * 3600
CODE_SECONDS = 300
UPKEEP_SECONDS = 60.0


class StoredCode(AuthorizationCode):
    key: str
    family: str


class StoredRefresh(RefreshToken):
    key: str
    family: str


class GrantedAccess(AccessToken):
    """A verified OAuth access token: ``subject`` is the person, ``scopes`` what they may do now."""

    family: str


def _canonical(url: str) -> str:
    return resource_url_from_server_url(url).rstrip("/")


class GatewayAuthorization(OAuthAuthorizationServerProvider[StoredCode, StoredRefresh, GrantedAccess]):
    """The SDK's ``OAuthAuthorizationServerProvider`` for the gateway (see the module's docstring).

    The identity-assertion grant (SEP-990) keeps the interface's default: refused as unsupported.
    """

    def __init__(
        self,
        *,
        issuer: str,
        resource: str,
        grants: Grants,
        clients: Clients,
        people: People,
        pending: PendingRequests | None = None,
        access_seconds: int = ACCESS_SECONDS,
        refresh_seconds: int = REFRESH_SECONDS,
        code_seconds: int = CODE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.resource = resource
        self.grants = grants
        self.clients = clients
        self.people = people
        self.pending = pending or PendingRequests()
        self.access_seconds = access_seconds
        self.refresh_seconds = refresh_seconds
        self.code_seconds = code_seconds
        self.clock = clock
        self._accepted = {_canonical(resource), _canonical(self.issuer)}
        self._changed = anyio.Event()
        people.on_change(lambda _data: self._forget_removed())

    # -- clients ------------------------------------------------------------------------------------

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        return await self.clients.get(client_id)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        await self.clients.register(client_info)

    # -- the browser's part -------------------------------------------------------------------------

    def accepts_resource(self, resource: str | None) -> bool:
        """True for no resource, this server's MCP URL or its origin (RFC 8707 lets the server decide)."""
        if resource is None:
            return True
        parts = urlsplit(resource)
        if parts.scheme not in ("http", "https") or parts.fragment or parts.query:
            return False
        return _canonical(resource) in self._accepted

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        if not self.accepts_resource(params.resource):
            raise AuthorizeError("invalid_target", f"this server issues tokens for {self.resource} only")
        pending = self.pending.open(
            client_id=client.client_id,
            client_name=(client.client_name or "")[:100],
            redirect_uri=str(params.redirect_uri),
            redirect_uri_provided_explicitly=params.redirect_uri_provided_explicitly,
            state=params.state,
            scopes=params.scopes,
            code_challenge=params.code_challenge,
            resource=self.resource,
        )
        return f"{self.issuer}{LOGIN_PATH}?request={pending.id}"

    async def issue_code(self, pending: Pending, person: str, scopes: ScopeSet) -> str:
        """The code the consent page hands to the client's redirect URI, for ``person`` and ``scopes``."""
        code = new_secret()
        self.grants.codes[digest(code)] = CodeRecord(
            client_id=pending.client_id,
            scopes=scopes.strings(),
            expires_at=self.clock() + self.code_seconds,
            code_challenge=pending.code_challenge,
            redirect_uri=pending.redirect_uri,
            redirect_uri_provided_explicitly=pending.redirect_uri_provided_explicitly,
            resource=pending.resource,
            subject=person,
            family=secrets.token_hex(8),
        )
        await self.grants.save()
        logger.info("OAuth: %s allowed client %s: %s", person, pending.client_id, " ".join(scopes.strings()) or "-")
        return code

    # -- codes ----------------------------------------------------------------------------------------

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> StoredCode | None:
        key = digest(authorization_code)
        record = self.grants.codes.get(key)
        if record is None:
            await self._replay(key, "an authorization code")
            return None
        return StoredCode(
            code=authorization_code,
            scopes=record.scopes,
            expires_at=record.expires_at,
            client_id=record.client_id,
            code_challenge=record.code_challenge,
            redirect_uri=AnyUrl(record.redirect_uri),
            redirect_uri_provided_explicitly=record.redirect_uri_provided_explicitly,
            resource=record.resource,
            subject=record.subject,
            key=key,
            family=record.family,
        )

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: StoredCode
    ) -> OAuthToken:
        # Taken out before anything awaits: of two exchanges of one code, only the first finds it.
        record = self.grants.codes.pop(authorization_code.key, None)
        if record is None or record.client_id != client.client_id:
            raise TokenError("invalid_grant", "authorization code does not exist")
        self.grants.spend(authorization_code.key, record.family, record.expires_at + self.code_seconds)
        scopes = self._still_held(record.subject, record.scopes)
        if scopes is None:
            await self.grants.save()
            raise TokenError("invalid_grant", "the person who authorized this is no longer allowed to log in")
        token = self._tokens(client.client_id, scopes, record.resource, record.subject, record.family)
        self.clients.mark_used(client.client_id)
        await self.grants.save()
        return token

    # -- refresh tokens -------------------------------------------------------------------------------

    async def load_refresh_token(self, client: OAuthClientInformationFull, refresh_token: str) -> StoredRefresh | None:
        key = digest(refresh_token)
        record = self.grants.tokens.get(key)
        if record is None or record.kind != "refresh":
            await self._replay(key, "a refresh token")
            return None
        return StoredRefresh(
            token=refresh_token,
            client_id=record.client_id,
            scopes=record.scopes,
            expires_at=record.expires_at,
            resource=record.resource,
            subject=record.subject,
            key=key,
            family=record.family,
        )

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: StoredRefresh, scopes: list[str]
    ) -> OAuthToken:
        record = self.grants.tokens.pop(refresh_token.key, None)
        if record is None or record.kind != "refresh" or record.client_id != client.client_id:
            raise TokenError("invalid_grant", "refresh token does not exist")
        self.grants.spend(refresh_token.key, record.family, record.expires_at)
        # Never more than the refresh token carried (the SDK checked), nor than the person holds now.
        asked = [s for s in scopes if s in record.scopes]
        held = self._still_held(record.subject, asked)
        if held is None:
            self.grants.revoke_family(record.family)
            await self.grants.save()
            raise TokenError("invalid_grant", "the person who authorized this is no longer allowed to log in")
        token = self._tokens(client.client_id, held, record.resource, record.subject, record.family)
        self.clients.mark_used(client.client_id)
        await self.grants.save()
        return token

    # -- access tokens --------------------------------------------------------------------------------

    def _live_access(self, token: str) -> TokenRecord | None:
        record = self.grants.tokens.get(digest(token))
        if record is None or record.kind != "access" or record.expires_at <= self.clock():
            return None
        return record

    async def load_access_token(self, token: str) -> GrantedAccess | None:
        record = self._live_access(token)
        if record is None:
            return None
        scopes = self._still_held(record.subject, record.scopes)
        if scopes is None:
            return None
        return GrantedAccess(
            token=token,
            client_id=record.client_id,
            scopes=scopes,
            expires_at=record.expires_at,
            resource=record.resource,
            subject=record.subject,
            claims={"iss": self.issuer},
            family=record.family,
        )

    def identify(self, token: str) -> str | None:
        """Whose live access token this is, as ``person@client`` (for per-caller limits); None if none's."""
        record = self._live_access(token)
        if record is None or self.people.get(record.subject) is None:
            return None
        return f"{record.subject}@{record.client_id}"

    async def revoke_token(self, token: GrantedAccess | StoredRefresh) -> None:
        if self.grants.revoke_family(token.family):
            logger.info("OAuth: client %s revoked a grant of %s", token.client_id, token.subject)
            await self.grants.save()

    # -- shared ---------------------------------------------------------------------------------------

    def _still_held(self, subject: str, scopes: list[str]) -> list[str] | None:
        """``scopes`` narrowed to what ``subject`` holds now; None when there is no such person."""
        person = self.people.get(subject)
        if person is None:
            return None
        return ScopeSet.parse_known(scopes).meet(person.scopes).strings()

    def _tokens(self, client_id: str, scopes: list[str], resource: str, subject: str, family: str) -> OAuthToken:
        common = {"client_id": client_id, "scopes": scopes, "resource": resource, "subject": subject, "family": family}
        access, _ = self.grants.issue("access", ttl=self.access_seconds, **common)  # type: ignore[arg-type]
        refresh, _ = self.grants.issue("refresh", ttl=self.refresh_seconds, **common)  # type: ignore[arg-type]
        return OAuthToken(
            access_token=access,
            expires_in=self.access_seconds,
            scope=" ".join(scopes),
            refresh_token=refresh,
        )

    async def _replay(self, key: str, what: str) -> None:
        family = self.grants.replayed(key)
        if family is not None:
            ended = self.grants.revoke_family(family)
            logger.warning("OAuth: %s was presented again; ended its grant (%d token(s))", what, ended)
            await self.grants.save()

    def _forget_removed(self) -> None:
        """A person removed from the people: their codes and tokens go too (a namesake added later starts afresh)."""
        subjects = {r.subject for r in self.grants.tokens.values()} | {r.subject for r in self.grants.codes.values()}
        gone = [s for s in subjects if self.people.get(s) is None]
        if gone and sum(self.grants.revoke_subject(s) for s in gone):
            self._changed.set()

    async def upkeep_forever(self, interval: float = UPKEEP_SECONDS) -> None:
        """Forget expired entries every ``interval`` s, and write out removals as they happen; never raises."""
        while True:
            changed = False
            with anyio.move_on_after(interval):
                await self._changed.wait()
                changed = True
            self._changed = anyio.Event()
            if self.grants.purge() or changed:
                await self.grants.save()
