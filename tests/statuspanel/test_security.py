"""The panel's defences through Starlette's TestClient: Host checks, session lifetime, edge validation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from statuspanel.app import create_app
from statuspanel.auth import Authenticator
from tests.statuspanel.conftest import MemoryBackend

TOKEN = "panel-token-for-security-tests"
BASE = "http://127.0.0.1:5001"


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
def client(backend: MemoryBackend) -> Iterator[TestClient]:
    app = create_app(backend, Authenticator(TOKEN, "admin", "s3cret-pass"), session_secret="s" * 32)
    with TestClient(app, base_url=BASE, follow_redirects=False) as c:
        yield c


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- names are matched whole ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/stacks/shop%0A",
        "/api/v1/stacks/shop%0A/logs",
        "/api/v1/stacks/shop/logs?since=10m%0A",
        "/api/v1/stacks/shop/logs?since=1764190800%0A",
    ],
)
def test_a_trailing_newline_does_not_pass_the_name_and_since_checks(
    client: TestClient, backend: MemoryBackend, path: str
) -> None:
    response = client.get(path, headers=bearer())
    assert response.status_code == 400, response.text
    assert backend.calls == []


def test_a_trailing_newline_does_not_pass_the_check_on_actions(client: TestClient, backend: MemoryBackend) -> None:
    response = client.post("/api/v1/stacks/shop%0A/restart", headers=bearer())
    assert response.status_code == 400
    assert "invalid stack name" in response.json()["error"]
    assert backend.calls == []
