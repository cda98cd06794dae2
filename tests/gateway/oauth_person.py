"""A person at a browser, scripted: follows an authorization URL, fills the login form, answers the consent page.

Used as the ``redirect_handler``/``callback_handler`` pair of the MCP SDK's own OAuth client
(``mcp.client.auth.OAuthClientProvider``), over plain HTTP with a cookie jar like a browser's.
"""

from __future__ import annotations

import html
import re
import ssl
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2
from mcp.client.auth import OAuthClientProvider
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from pydantic import AnyUrl

__all__ = ["MemoryStorage", "ScriptedPerson", "oauth_client", "hidden_fields"]

_INPUT = re.compile(r'<input type="hidden" name="(?P<name>[a-z_]+)" value="(?P<value>[^"]*)">')


def hidden_fields(page: str) -> dict[str, str]:
    """The hidden fields of the first form of a page (request id and CSRF token)."""
    fields: dict[str, str] = {}
    for match in _INPUT.finditer(page):
        fields.setdefault(match["name"], html.unescape(match["value"]))
    return fields


class MemoryStorage:
    """The SDK client's token storage, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


@dataclass
class ScriptedPerson:
    """Logs in as ``username`` with ``password`` and presses ``decision`` (allow or deny) on the consent page."""

    username: str
    password: str
    decision: str = "allow"
    verify: ssl.SSLContext | bool = True
    pages: list[str] = field(default_factory=list)
    result: AuthorizationCodeResult | None = None
    final: httpx2.Response | None = None

    _http: httpx2.AsyncClient | None = None

    @property
    def http(self) -> httpx2.AsyncClient:
        """The person's browser: one cookie jar for the whole session."""
        if self._http is None:
            self._http = httpx2.AsyncClient(timeout=30, verify=self.verify)
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> ScriptedPerson:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def follow(self, authorization_url: str) -> None:
        """What a browser does with the authorization URL, up to the redirect back to the client."""
        self.result = None
        response = await self.http.get(authorization_url)
        while response.status_code in (302, 303) and urlsplit(response.headers["location"]).path.startswith(
            ("/oauth/", "/authorize")
        ):
            response = await self.http.get(urljoin(str(response.url), response.headers["location"]))
        self.pages.append(response.text)
        if response.status_code != 200 or "login-form" not in response.text:
            self.final = response
            return
        fields = hidden_fields(response.text)
        response = await self.http.post(
            urljoin(str(response.url), "/oauth/login"),
            data={**fields, "username": self.username, "password": self.password},
        )
        if response.status_code != 303:
            self.pages.append(response.text)
            self.final = response
            return
        response = await self.http.get(urljoin(str(response.url), response.headers["location"]))
        self.pages.append(response.text)
        if response.status_code != 200:
            self.final = response
            return
        fields = hidden_fields(response.text)
        response = await self.http.post(
            urljoin(str(response.url), "/oauth/consent"), data={**fields, "decision": self.decision}
        )
        self.final = response
        if response.status_code == 303:
            query = parse_qs(urlsplit(response.headers["location"]).query)
            if "code" in query:
                self.result = AuthorizationCodeResult(
                    code=query["code"][0], state=query.get("state", [None])[0], iss=query.get("iss", [None])[0]
                )

    async def callback(self) -> AuthorizationCodeResult:
        if self.result is None:
            final = self.final
            detail = f"{final.status_code} {final.headers.get('location', '')}" if final is not None else "nothing"
            raise RuntimeError(f"the person got no code: {detail}")
        return self.result


def oauth_client(
    gateway_url: str,
    person: ScriptedPerson,
    *,
    redirect_uri: str = "http://127.0.0.1:9/callback",
    client_metadata_url: str | None = None,
    storage: MemoryStorage | None = None,
    scope: str | None = None,
) -> OAuthClientProvider:
    """The SDK's own OAuth client for ``gateway_url`` (its MCP URL), with ``person`` at the browser."""
    metadata = OAuthClientMetadata(
        client_name="test client",
        redirect_uris=[AnyUrl(redirect_uri)],
        grant_types=["authorization_code", "refresh_token"],
        response_types=["code"],
        token_endpoint_auth_method="none" if client_metadata_url else "client_secret_post",
        scope=scope,
    )
    return OAuthClientProvider(
        gateway_url,
        metadata,
        storage or MemoryStorage(),
        redirect_handler=person.follow,
        callback_handler=person.callback,
        client_metadata_url=client_metadata_url,
    )
