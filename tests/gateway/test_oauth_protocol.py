"""The authorization server step by step, over plain HTTP: metadata, challenges, PKCE, codes, refresh, forms.

These exchanges are what a client (or an attacker) sends; one gateway serves the whole module, and
each test makes its own person. Tests that change the gateway itself (its limiter, its public URL)
start their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.gateway.conftest import GatewayProcess, stop_process
from tests.gateway.oauth_fixtures import PASSWORD, OAuthGateway, start_oauth_gateway
from tests.gateway.oauth_person import ScriptedPerson, hidden_fields
from tests.gateway.oauth_protocol import (
    REDIRECT,
    Pkce,
    Registered,
    authorize_url,
    code_for,
    exchange,
    refresh,
    register,
)
from tests.polling import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

MCP_ACCEPT = {"Accept": "application/json, text/event-stream"}
PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}


@pytest.fixture(scope="module")
def oauth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthGateway]:
    root = tmp_path_factory.mktemp("oauth-protocol")
    (root / "stacks").mkdir()
    gateway = start_oauth_gateway(root, root / "stacks")
    yield gateway
    stop_process(gateway.gw.process)


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=30) as client:
        yield client


_counter = iter(range(10_000))


def person_of(oauth: OAuthGateway, *grants: str) -> ScriptedPerson:
    name = f"p{next(_counter)}-{oauth.port}"
    oauth.add_person(name, *grants)
    return ScriptedPerson(name, PASSWORD)


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def tokens_for(
    oauth: OAuthGateway, http: httpx2.AsyncClient, person: ScriptedPerson, **params: str
) -> tuple[Registered, dict[str, Any]]:
    client = await register(http, oauth.public)
    pkce = Pkce.new()
    code = await code_for(person, authorize_url(oauth.public, client, pkce, **params))
    answer = await exchange(http, oauth.public, client, code, pkce)
    assert answer.status_code == 200, answer.text
    return client, answer.json()


async def status_with(http: httpx2.AsyncClient, url: str, token: str) -> int:
    """401 for a token refused; otherwise what a ping without a session gets (400: the token was accepted)."""
    response = await http.post(url, json=PING, headers={"Authorization": f"Bearer {token}", **MCP_ACCEPT})
    return response.status_code


ACCEPTED = 400  # a ping outside a session: past authentication, refused by the transport


# -- what a client discovers -------------------------------------------------------------------------


async def test_both_metadata_documents_field_by_field(oauth: OAuthGateway, http: httpx2.AsyncClient) -> None:
    resource = (await http.get(f"{oauth.public}/.well-known/oauth-protected-resource/mcp")).json()
    assert resource == {
        "resource": f"{oauth.public}/mcp",
        "authorization_servers": [oauth.public],
        "scopes_supported": ["compose:read", "compose:write", "compose:deploy", "compose:approve"],
        "bearer_methods_supported": ["header"],
        "resource_name": "compose-agent",
    }
    server = (await http.get(f"{oauth.public}/.well-known/oauth-authorization-server")).json()
    assert server == {
        "issuer": oauth.public,
        "authorization_endpoint": f"{oauth.public}/authorize",
        "token_endpoint": f"{oauth.public}/token",
        "registration_endpoint": f"{oauth.public}/register",
        "revocation_endpoint": f"{oauth.public}/revoke",
        "scopes_supported": ["compose:read", "compose:write", "compose:deploy", "compose:approve"],
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
        "code_challenge_methods_supported": ["S256"],
        "client_id_metadata_document_supported": True,
        "authorization_response_iss_parameter_supported": True,
    }


@pytest.mark.parametrize("token", [None, "not-a-token"])
async def test_a_request_without_a_valid_token_gets_the_401_challenge(
    oauth: OAuthGateway, http: httpx2.AsyncClient, token: str | None
) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for response in (
        await http.post(oauth.url, json=PING, headers={**headers, **MCP_ACCEPT}),
        await http.get(f"{oauth.public}/sse", headers=headers),
    ):
        assert response.status_code == 401
        scheme, _, params = response.headers["www-authenticate"].partition(" ")
        assert scheme == "Bearer"
        assert f'resource_metadata="{oauth.public}/.well-known/oauth-protected-resource/mcp"' in params
        assert 'error="invalid_token"' in params


async def test_static_tokens_keep_working_beside_oauth(oauth: OAuthGateway) -> None:
    gw: GatewayProcess = oauth.gw
    for token in (gw.agent_token, gw.panel_token):
        async with httpx2.AsyncClient(headers=gw.headers(token), timeout=30) as http:
            async with Client(streamable_http_client(oauth.url, http_client=http), mode="legacy") as client:
                result = await client.call_tool("list_stacks", {})
        assert not result.is_error


async def test_without_a_public_url_there_is_no_oauth_at_all(gateway: GatewayProcess) -> None:
    async with httpx2.AsyncClient(timeout=30) as http:
        for path in (
            "/.well-known/oauth-protected-resource/mcp",
            "/.well-known/oauth-authorization-server",
            "/authorize",
            "/register",
            "/oauth/login",
        ):
            response = await http.get(f"{gateway.base}{path}")
            assert response.status_code in (401, 404), path
            assert "issuer" not in response.text
        challenge = await http.post(gateway.url, json=PING, headers=MCP_ACCEPT)
        assert challenge.status_code == 401 and "resource_metadata" not in challenge.headers.get("www-authenticate", "")


# -- the authorization request --------------------------------------------------------------------


async def test_plain_pkce_and_a_missing_challenge_are_refused(oauth: OAuthGateway, http: httpx2.AsyncClient) -> None:
    client = await register(http, oauth.public)
    for params in ({"code_challenge_method": "plain"}, {"code_challenge": ""}):
        response = await http.get(authorize_url(oauth.public, client, Pkce.new(), **params))
        assert response.status_code == 302
        location = response.headers["location"]
        assert location.startswith(REDIRECT)  # the client hears why; no login page is shown
        answer = query_of(location)
        assert answer["error"] == "invalid_request" and answer["iss"] == oauth.public and "code" not in answer


async def test_an_unknown_redirect_uri_is_refused_without_a_redirect(
    oauth: OAuthGateway, http: httpx2.AsyncClient
) -> None:
    client = await register(http, oauth.public)
    for evil in ("https://evil.example/callback", "http://127.0.0.1:9/other"):
        response = await http.get(authorize_url(oauth.public, Registered(client.client_id, None, evil), Pkce.new()))
        assert response.status_code == 400
        assert "location" not in response.headers
        assert response.json()["error"] == "invalid_request"


async def test_registration_refuses_redirect_uris_that_are_not_safe(
    oauth: OAuthGateway, http: httpx2.AsyncClient
) -> None:
    for uri in ("javascript:alert(1)", "http://evil.example/cb", "https://app.example/cb#frag", "data:text/html,x"):
        body = {"client_name": "x", "redirect_uris": [uri], "token_endpoint_auth_method": "none"}
        response = await http.post(f"{oauth.public}/register", json=body)
        assert response.status_code == 400, uri
        assert response.json()["error"] in ("invalid_redirect_uri", "invalid_client_metadata")


async def test_a_scope_that_is_not_ours_is_refused(oauth: OAuthGateway, http: httpx2.AsyncClient) -> None:
    client = await register(http, oauth.public)
    response = await http.get(authorize_url(oauth.public, client, Pkce.new(), scope="admin compose:read"))
    answer = query_of(response.headers["location"])
    assert answer["error"] == "invalid_scope" and answer["iss"] == oauth.public


async def test_a_token_for_another_resource_is_refused(oauth: OAuthGateway, http: httpx2.AsyncClient) -> None:
    other = "https://other.example/mcp"
    client = await register(http, oauth.public)
    response = await http.get(authorize_url(oauth.public, client, Pkce.new(), resource=other))
    assert query_of(response.headers["location"])["error"] == "invalid_target"
    # Authorized for this server, then exchanged naming another: no token either.
    async with person_of(oauth, "compose:read") as person:
        pkce = Pkce.new()
        code = await code_for(person, authorize_url(oauth.public, client, pkce))
    answer = await exchange(http, oauth.public, client, code, pkce, resource=other)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_target"


# -- codes ------------------------------------------------------------------------------------------


async def test_a_replayed_code_is_refused_and_ends_what_it_gave(oauth: OAuthGateway, http: httpx2.AsyncClient) -> None:
    client = await register(http, oauth.public)
    pkce = Pkce.new()
    async with person_of(oauth, "compose:read") as person:
        code = await code_for(person, authorize_url(oauth.public, client, pkce))
    first = await exchange(http, oauth.public, client, code, pkce)
    assert first.status_code == 200
    token = first.json()["access_token"]
    assert await status_with(http, oauth.url, token) == ACCEPTED
    again = await exchange(http, oauth.public, client, code, pkce)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # Whoever replayed it may hold the first token too: it is ended with the rest of the grant.
    assert await status_with(http, oauth.url, token) == 401
    assert (await refresh(http, oauth.public, client, first.json()["refresh_token"])).status_code == 400


async def test_a_code_for_one_client_is_refused_to_another(oauth: OAuthGateway, http: httpx2.AsyncClient) -> None:
    mine, theirs = await register(http, oauth.public), await register(http, oauth.public)
    pkce = Pkce.new()
    async with person_of(oauth, "compose:read") as person:
        code = await code_for(person, authorize_url(oauth.public, mine, pkce))
    stolen = await exchange(http, oauth.public, theirs, code, pkce)
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    wrong_verifier = await exchange(http, oauth.public, mine, code, Pkce.new())
    assert wrong_verifier.status_code == 400 and wrong_verifier.json()["error"] == "invalid_grant"
    assert (await exchange(http, oauth.public, mine, code, pkce)).status_code == 200


# -- refresh tokens ---------------------------------------------------------------------------------


async def test_refresh_tokens_rotate_and_a_reused_one_ends_the_grant(
    oauth: OAuthGateway, http: httpx2.AsyncClient
) -> None:
    async with person_of(oauth, "compose:read") as person:
        client, tokens = await tokens_for(oauth, http, person)
    rotated = await refresh(http, oauth.public, client, tokens["refresh_token"])
    assert rotated.status_code == 200
    fresh = rotated.json()
    assert fresh["refresh_token"] != tokens["refresh_token"] and fresh["access_token"] != tokens["access_token"]
    assert await status_with(http, oauth.url, fresh["access_token"]) == ACCEPTED
    # The old refresh token again: a copy is in someone's hands, so the whole grant ends.
    reused = await refresh(http, oauth.public, client, tokens["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    assert await status_with(http, oauth.url, fresh["access_token"]) == 401
    assert (await refresh(http, oauth.public, client, fresh["refresh_token"])).status_code == 400


async def test_refresh_never_widens_what_was_granted(oauth: OAuthGateway, http: httpx2.AsyncClient) -> None:
    async with person_of(oauth, "compose:read", "compose:write:web") as person:
        client, tokens = await tokens_for(oauth, http, person, scope="compose:read")
        assert tokens["scope"] == "compose:read"
        wider = await refresh(http, oauth.public, client, tokens["refresh_token"], scope="compose:read compose:write")
        assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
        # Another client cannot use it.
        stranger = await register(http, oauth.public)
        taken = await refresh(http, oauth.public, stranger, tokens["refresh_token"])
        assert taken.status_code == 400 and taken.json()["error"] == "invalid_grant"
        # The operator takes a grant away: the next refresh carries no more than the person now holds.
        owner, both = await tokens_for(oauth, http, person)
        assert both["scope"] == "compose:read compose:write:web"
        done = oauth.users("revoke", person.username, "compose:write:web")
        assert done.returncode == 0, done.stderr
    current = both["refresh_token"]

    async def narrowed() -> bool:
        nonlocal current
        answer = await refresh(http, oauth.public, owner, current)
        assert answer.status_code == 200, answer.text
        current = answer.json()["refresh_token"]
        return bool(answer.json()["scope"] == "compose:read")

    await eventually(narrowed, timeout=5.0, interval=0.2, what="a refresh without the revoked grant")


async def test_revoking_a_refresh_token_ends_its_access_token_too(
    oauth: OAuthGateway, http: httpx2.AsyncClient
) -> None:
    async with person_of(oauth, "compose:read") as person:
        client, tokens = await tokens_for(oauth, http, person)
    assert await status_with(http, oauth.url, tokens["access_token"]) == ACCEPTED
    revoked = await http.post(
        f"{oauth.public}/revoke",
        data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token", "client_id": client.client_id},
    )
    assert revoked.status_code == 200
    assert await status_with(http, oauth.url, tokens["access_token"]) == 401


# -- the forms ----------------------------------------------------------------------------------------


async def _at_consent(
    oauth: OAuthGateway, http: httpx2.AsyncClient, person: ScriptedPerson
) -> tuple[str, dict[str, str]]:
    """Logs ``person`` in; returns the consent page's URL and its hidden fields."""
    client = await register(http, oauth.public)
    response = await person.http.get(authorize_url(oauth.public, client, Pkce.new()))
    login = await person.http.get(f"{oauth.public}{response.headers['location'].removeprefix(oauth.public)}")
    fields = hidden_fields(login.text)
    posted = await person.http.post(
        f"{oauth.public}/oauth/login", data={**fields, "username": person.username, "password": person.password}
    )
    assert posted.status_code == 303
    consent_url = f"{oauth.public}{posted.headers['location']}"
    page = await person.http.get(consent_url)
    assert page.status_code == 200 and "consent-form" in page.text
    return consent_url, hidden_fields(page.text)


async def test_the_consent_form_acts_only_for_the_browser_that_logged_in(
    oauth: OAuthGateway, http: httpx2.AsyncClient
) -> None:
    async with person_of(oauth, "compose:read") as person:
        consent_url, fields = await _at_consent(oauth, http, person)
        async with httpx2.AsyncClient(timeout=30) as stranger:
            # Another browser, knowing the request id and even the CSRF token, gets nowhere.
            assert (await stranger.get(consent_url)).status_code == 403
            crossed = await stranger.post(f"{oauth.public}/oauth/consent", data={**fields, "decision": "allow"})
            assert crossed.status_code == 403 and "location" not in crossed.headers
        # The right browser without the form's token, or from another site: refused too.
        forged = await person.http.post(
            f"{oauth.public}/oauth/consent", data={"request": fields["request"], "csrf": "guess", "decision": "allow"}
        )
        assert forged.status_code == 403 and "location" not in forged.headers
        cross_site = await person.http.post(
            f"{oauth.public}/oauth/consent",
            data={**fields, "decision": "allow"},
            headers={"Origin": "https://evil.example"},
        )
        assert cross_site.status_code == 403 and "location" not in cross_site.headers
        # And the real answer still works, once.
        allowed = await person.http.post(f"{oauth.public}/oauth/consent", data={**fields, "decision": "allow"})
        assert allowed.status_code == 303 and "code" in query_of(allowed.headers["location"])
        twice = await person.http.post(f"{oauth.public}/oauth/consent", data={**fields, "decision": "allow"})
        assert twice.status_code == 400


async def test_no_form_field_chooses_where_the_browser_goes(oauth: OAuthGateway, http: httpx2.AsyncClient) -> None:
    async with person_of(oauth, "compose:read") as person:
        _, fields = await _at_consent(oauth, http, person)
        answer = await person.http.post(
            f"{oauth.public}/oauth/consent",
            data={**fields, "decision": "allow", "redirect_uri": "https://evil.example/", "next": "//evil.example"},
        )
    location = answer.headers["location"]
    assert answer.status_code == 303 and location.startswith(REDIRECT + "?")
    assert query_of(location)["iss"] == oauth.public and query_of(location)["state"] == "the-state"
    # The pages cannot be framed, and they name where a form may lead.
    csp = answer.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "form-action 'self' http://127.0.0.1:9" in csp
    assert answer.headers["x-frame-options"] == "DENY"


async def test_deny_sends_access_denied_back_and_issues_nothing(oauth: OAuthGateway, http: httpx2.AsyncClient) -> None:
    async with person_of(oauth, "compose:read") as person:
        _, fields = await _at_consent(oauth, http, person)
        denied = await person.http.post(f"{oauth.public}/oauth/consent", data={**fields, "decision": "deny"})
    answer = query_of(denied.headers["location"])
    assert answer["error"] == "access_denied" and answer["iss"] == oauth.public and "code" not in answer


async def test_a_person_without_any_asked_scope_cannot_allow(oauth: OAuthGateway, http: httpx2.AsyncClient) -> None:
    async with person_of(oauth, "compose:approve") as person:
        client = await register(http, oauth.public)
        await person.follow(authorize_url(oauth.public, client, Pkce.new(), scope="compose:write"))
    page = next(p for p in person.pages if "consent-form" in p)
    assert 'data-testid="consent-nothing"' in page and "disabled" in page
    assert person.final is not None and query_of(person.final.headers["location"])["error"] == "access_denied"


async def test_the_login_limiter_refuses_after_five_failures_but_never_a_token(
    tmp_path: Path, http: httpx2.AsyncClient
) -> None:
    (tmp_path / "stacks").mkdir()
    oauth = start_oauth_gateway(tmp_path, tmp_path / "stacks", people={"hal": ["compose:read"]})
    try:
        client = await register(http, oauth.public)
        async with ScriptedPerson("hal", "wrong password number one") as guesser:
            for attempt in range(5):
                await guesser.follow(authorize_url(oauth.public, client, Pkce.new()))
                assert guesser.final is not None and guesser.final.status_code == 401, attempt
                assert "Wrong username or password." in guesser.pages[-1]
        # The sixth try from this address is refused unchecked, even with the right password.
        async with ScriptedPerson("hal", PASSWORD) as right:
            await right.follow(authorize_url(oauth.public, client, Pkce.new()))
            assert right.final is not None and right.final.status_code == 429
            assert int(right.final.headers["retry-after"]) >= 1
            assert "Too many failed sign-ins" in right.pages[-1]
        # Meanwhile a valid bearer token from the very same address is served as ever.
        assert await status_with(http, oauth.url, oauth.gw.agent_token) == ACCEPTED
    finally:
        stop_process(oauth.gw.process)


async def test_a_token_issued_under_another_public_url_is_refused(tmp_path: Path, http: httpx2.AsyncClient) -> None:
    (tmp_path / "stacks").mkdir()
    oauth = start_oauth_gateway(tmp_path, tmp_path / "stacks", people={"ivy": ["compose:read"]})
    try:
        async with ScriptedPerson("ivy", PASSWORD) as person:
            _, tokens = await tokens_for(oauth, http, person)
        assert await status_with(http, oauth.url, tokens["access_token"]) == ACCEPTED
    finally:
        stop_process(oauth.gw.process)
    # The same gateway and state, now known as localhost: the old token was for another resource.
    from tests.gateway.conftest import start_gateway

    moved = start_gateway(
        tmp_path,
        tmp_path / "stacks",
        "--public-url",
        f"http://localhost:{oauth.port}",
        port=oauth.port,
        env={"COMPOSE_AGENT_STATE_DIR": str(oauth.state), "AUDIT_LOG": str(oauth.state / "audit.log")},
    )
    try:
        assert await status_with(http, f"http://localhost:{oauth.port}/mcp", tokens["access_token"]) == 401
    finally:
        stop_process(moved.process)
