"""The panel's defences through Starlette's TestClient: Host checks, session lifetime, edge validation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from statuspanel.app import create_app, validate_since
from statuspanel.auth import Authenticator
from statuspanel.errors import BadRequest
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


# --- since ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("since", "fragment"),
    [
        ("999999999999", "more than a day in the future"),
        ("999999999999.999", "more than a day in the future"),
        ("2026-13-45T99:99:99Z", "not a real date"),
        ("1" * 65, "not understood"),
        ("10m;rm", "not understood"),
    ],
)
def test_a_bad_since_is_400_with_what_to_send(
    client: TestClient, backend: MemoryBackend, since: str, fragment: str
) -> None:
    response = client.get("/api/v1/stacks/shop/logs", params={"since": since}, headers=bearer())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert fragment in error
    assert "RFC 3339" in error and "10m" in error
    assert backend.calls == []


@pytest.mark.parametrize(
    ("since", "sent"),
    [
        ("10m", "10m"),
        ("1h30m", "1h30m"),
        ("2026-11-26T21:00:00Z", "2026-11-26T21:00:00Z"),
        ("2026-11-26T21:00:00.123456789+01:00", "2026-11-26T21:00:00.123456789+01:00"),
        ("0", "1970-01-01T00:00:00.000Z"),
        ("1764190800.5", "2025-11-26T21:00:00.500Z"),
    ],
)
def test_good_since_values_reach_the_backend(client: TestClient, backend: MemoryBackend, since: str, sent: str) -> None:
    response = client.get("/api/v1/stacks/shop/logs", params={"since": since}, headers=bearer())
    assert response.status_code == 200, response.text
    assert backend.calls[-1][1]["since"] == sent


def test_unix_since_may_lead_the_clock_by_a_day_but_no_more() -> None:
    now = 1_800_000_000.0
    assert validate_since(str(int(now + 86_000)), now=now)
    with pytest.raises(BadRequest):
        validate_since(str(int(now + 86_401)), now=now)
