"""Who may be a client: metadata documents fetched safely, registrations bounded, parked requests bounded.

The authorization server's app runs in process (``httpx2.ASGITransport``); the metadata documents
come from a real HTTPS server on loopback, with a certificate from a test CA.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from gateway.auth.documents import FileDocument
from gateway.auth.people import People
from gateway.auth.principals import TokenStore
from gateway.config import Settings
from gateway.mcp.access import GatewayTokenVerifier
from gateway.mcp.oauth import OAuthServer, build_oauth
from gateway.mcp.oauth.clients import MetadataDocuments, check_redirect_uri, is_metadata_url
from gateway.mcp.oauth.pending import PendingRequests
from gateway.mcp.oauth.routes import REGISTRATIONS_PER_HOUR
from tests.gateway.oauth_tls import MetadataServer, metadata_server

__all__ = ["metadata_server"]

pytestmark = pytest.mark.anyio

PUBLIC = "http://127.0.0.1:9999"


@pytest.fixture
async def oauth(tmp_path: Path) -> AsyncIterator[OAuthServer]:
    settings = Settings(state_dir=tmp_path, public_url=PUBLIC)
    people = People(FileDocument(tmp_path / "people.json"))
    await people.load()
    server = await build_oauth(settings, static=GatewayTokenVerifier(TokenStore()), people=people)
    yield server
    server.close()


def app_client(oauth: OAuthServer) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=oauth.app), base_url=PUBLIC)


async def test_registrations_per_address_are_limited(oauth: OAuthServer) -> None:
    body = {"redirect_uris": ["http://127.0.0.1:9/cb"], "token_endpoint_auth_method": "none"}
    async with app_client(oauth) as http:
        for _ in range(REGISTRATIONS_PER_HOUR):
            assert (await http.post("/register", json=body)).status_code == 201
        refused = await http.post("/register", json=body)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert len(oauth.provider.grants.clients) == REGISTRATIONS_PER_HOUR


async def test_a_flood_of_authorization_requests_keeps_only_the_newest() -> None:
    pending = PendingRequests(max_pending=3)
    opened = [
        pending.open(
            client_id="c",
            client_name="",
            redirect_uri="http://127.0.0.1:9/cb",
            redirect_uri_provided_explicitly=True,
            state=None,
            scopes=None,
            code_challenge="x" * 43,
            resource=f"{PUBLIC}/mcp",
        )
        for _ in range(5)
    ]
    assert len(pending) == 3
    assert pending.get(opened[0].id) is None and pending.get(opened[-1].id) is opened[-1]
    assert pending.get("x" * 100) is None and pending.get(None) is None


@pytest.mark.parametrize(
    ("uri", "ok"),
    [
        ("https://claude.ai/api/mcp/auth_callback", True),
        ("http://127.0.0.1:33418/callback", True),
        ("http://localhost:1/cb", True),
        ("cursor://anysphere.cursor-retrieval/oauth/callback", True),
        ("http://claude.ai/cb", False),
        ("https://app.example/cb#x", False),
        ("javascript:alert(1)", False),
        ("data:text/html,hi", False),
        ("file:///etc/passwd", False),
    ],
)
def test_which_redirect_uris_a_client_may_register(uri: str, ok: bool) -> None:
    assert (check_redirect_uri(uri) is None) is ok


def test_only_an_https_url_with_a_path_is_a_metadata_document_client_id() -> None:
    assert is_metadata_url("https://app.example/oauth/client.json")
    for other in ("http://app.example/client.json", "https://app.example/", "https://app.example", "a-uuid-1234"):
        assert not is_metadata_url(other)


async def test_a_metadata_document_is_not_fetched_from_a_private_address(metadata_server: MetadataServer) -> None:
    documents = MetadataDocuments(allow_private=False)
    assert await documents.get(metadata_server.url) is None
    assert metadata_server.fetches == 0  # refused before connecting: no request reached it


async def test_a_metadata_document_is_fetched_checked_and_cached(
    metadata_server: MetadataServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(metadata_server.ca))
    documents = MetadataDocuments(allow_private=True)
    client = await documents.get(metadata_server.url)
    assert client is not None and client.client_id == metadata_server.url
    assert client.client_name == "Metadata-document client" and client.token_endpoint_auth_method == "none"
    assert await documents.get(metadata_server.url) is client and metadata_server.fetches == 1


@pytest.mark.parametrize(
    "change",
    [
        {"client_id": "https://someone.else/client.json"},
        {"redirect_uris": ["javascript:alert(1)"]},
        {"token_endpoint_auth_method": "private_key_jwt"},
        {"client_name": "x" * 6000},  # over the 5 KB a document may take
        {"scope": "compose:everything"},
    ],
)
async def test_a_metadata_document_that_does_not_hold_up_is_refused_and_the_refusal_cached(
    metadata_server: MetadataServer, monkeypatch: pytest.MonkeyPatch, change: dict[str, object]
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(metadata_server.ca))
    metadata_server.document.update(change)
    documents = MetadataDocuments(allow_private=True)
    assert await documents.get(metadata_server.url) is None
    assert await documents.get(metadata_server.url) is None
    assert metadata_server.fetches == 1


async def test_a_document_behind_an_untrusted_certificate_is_refused(metadata_server: MetadataServer) -> None:
    # No SSL_CERT_FILE: the test CA is not trusted, so the handshake fails and nothing is read.
    assert await MetadataDocuments(allow_private=True).get(metadata_server.url) is None


async def test_the_authorization_server_names_a_client_by_its_document(
    oauth: OAuthServer, metadata_server: MetadataServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(metadata_server.ca))
    async with app_client(oauth) as http:
        response = await http.get(
            "/authorize",
            params={
                "response_type": "code",
                "client_id": metadata_server.url,
                "redirect_uri": "http://127.0.0.1:9/callback",
                "code_challenge": "x" * 43,
                "code_challenge_method": "S256",
                "state": "s",
            },
        )
        assert response.status_code == 302 and response.headers["location"].startswith(f"{PUBLIC}/oauth/login")
        login = await http.get(response.headers["location"])
    assert "Metadata-document client" in login.text
    # Nothing was registered: the document is the client.
    assert oauth.provider.grants.clients == {}


async def test_an_oversized_form_is_refused_before_it_is_read(oauth: OAuthServer) -> None:
    async with app_client(oauth) as http:
        answer = await http.post("/oauth/login", data={"request": "x", "password": "p" * 100_000})
    assert answer.status_code == 413
