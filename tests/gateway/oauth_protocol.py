"""The OAuth exchanges spelled out over plain HTTP, for tests that check one step at a time.

The SDK's own client (``oauth_person.oauth_client``) does all of this in one go; a test that wants
to replay a code, swap a client or name another resource needs the steps separately.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx2

from tests.gateway.oauth_person import ScriptedPerson

__all__ = ["REDIRECT", "Pkce", "Registered", "authorize_url", "code_for", "exchange", "refresh", "register"]

REDIRECT = "http://127.0.0.1:9/callback"


@dataclass(frozen=True)
class Pkce:
    verifier: str
    challenge: str

    @classmethod
    def new(cls) -> Pkce:
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        return cls(verifier, challenge)


@dataclass(frozen=True)
class Registered:
    client_id: str
    client_secret: str | None
    redirect: str


async def register(
    http: httpx2.AsyncClient, public: str, *, redirect: str = REDIRECT, name: str = "protocol test", **extra: Any
) -> Registered:
    body = {"client_name": name, "redirect_uris": [redirect], "token_endpoint_auth_method": "none", **extra}
    response = await http.post(f"{public}/register", json=body)
    assert response.status_code == 201, response.text
    data = response.json()
    return Registered(data["client_id"], data.get("client_secret"), redirect)


def authorize_url(public: str, client: Registered, pkce: Pkce, **params: str) -> str:
    query = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": client.redirect,
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
        "state": "the-state",
        "resource": f"{public}/mcp",
        **params,
    }
    return f"{public}/authorize?{urlencode({k: v for k, v in query.items() if v != ''})}"


async def code_for(person: ScriptedPerson, url: str) -> str:
    """The code a person's consent produced for ``url`` (fails the test if there was none)."""
    await person.follow(url)
    assert person.result is not None, (person.final.status_code if person.final else None, person.pages[-1:])
    return person.result.code


async def exchange(
    http: httpx2.AsyncClient, public: str, client: Registered, code: str, pkce: Pkce, **extra: str
) -> httpx2.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": client.redirect,
        "client_id": client.client_id,
        "code_verifier": pkce.verifier,
        "resource": f"{public}/mcp",
        **extra,
    }
    if client.client_secret:
        data["client_secret"] = client.client_secret
    return await http.post(f"{public}/token", data={k: v for k, v in data.items() if v != ""})


async def refresh(
    http: httpx2.AsyncClient, public: str, client: Registered, refresh_token: str, **extra: str
) -> httpx2.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client.client_id, **extra}
    if client.client_secret:
        data["client_secret"] = client.client_secret
    return await http.post(f"{public}/token", data=data)
