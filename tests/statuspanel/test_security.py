"""The panel's defences through Starlette's TestClient: Host checks, session lifetime, edge validation."""

from __future__ import annotations

import base64
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest
from itsdangerous import TimestampSigner
from starlette.testclient import TestClient

from gateway.api import ControlPlane, GatewayError
from statuspanel.__main__ import allowed_hosts, control_plane
from statuspanel.app import create_app
from statuspanel.credentials import Authenticator
from statuspanel.errors import BadRequest
from statuspanel.hosts import AllowedHosts
from statuspanel.settings import PanelSettings, load_panel_settings
from statuspanel.validation import validate_since
from tests.conftest import free_port
from tests.statuspanel.conftest import APP_BASE, APP_TOKEN, MemoryBackend, Panel, _clean_env, bearer, start_panel

TOKEN = APP_TOKEN
BASE = APP_BASE


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
        # Unix seconds go on as given: the gateway's `since` grammar is the panel's, and takes them.
        ("0", "0"),
        ("1764190800.5", "1764190800.5"),
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


# --- Host and Origin: DNS rebinding --------------------------------------------------------------


def open_client(backend: MemoryBackend, base: str = BASE, **options: object) -> TestClient:
    """Open mode (no token, no password), as on loopback or in legacy mode without credentials."""
    app = create_app(backend, Authenticator(), session_secret="o" * 32, **options)  # type: ignore[arg-type]
    return TestClient(app, base_url=base, follow_redirects=False)


def test_a_rebound_name_cannot_read_the_page_or_bring_a_stack_down_in_open_mode(backend: MemoryBackend) -> None:
    # attacker.example now resolves to 127.0.0.1: to the browser, its page and the panel are one origin.
    with open_client(backend, "http://attacker.example:5001") as attacker:
        page = attacker.get("/")
        assert page.status_code == 400
        assert "csrf-token" not in page.text
        assert "STATUS_PANEL_ALLOWED_HOSTS" in page.text
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
        down = attacker.post(
            "/api/v1/stacks/shop/down",
            json={"volumes": True},
            headers={"Origin": "http://attacker.example:5001", "X-CSRF-Token": csrf.group(1) if csrf else ""},
        )
        assert down.status_code == 400
        assert "is not allowed" in down.json()["error"]
        for path in ("/health", "/login", "/static/panel.css", "/api/v1/stacks"):
            assert attacker.get(path).status_code == 400, path
    assert backend.calls == []


@pytest.mark.parametrize("host", ["127.0.0.1:5001", "localhost:5001", "LocalHost", "[::1]:5001", "[0:0::1]", "[::1]"])
def test_loopback_names_are_allowed_by_default_ipv6_included(backend: MemoryBackend, host: str) -> None:
    with open_client(backend) as client:
        assert client.get("/api/v1/stacks", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    "host", ["", "::1", "127.0.0.1:port", "[::1", "[::g]:5001", "a b", "user@127.0.0.1", "127.0.0.2"]
)
def test_malformed_or_other_hosts_are_refused(backend: MemoryBackend, host: str) -> None:
    with open_client(backend) as client:
        assert client.get("/api/v1/stacks", headers={"Host": host}).status_code == 400


def test_configured_hosts_replace_the_loopback_names(backend: MemoryBackend) -> None:
    with open_client(backend, allowed_hosts=["panel.example", "10.0.0.5"]) as client:
        assert client.get("/api/v1/stacks", headers={"Host": "panel.example:5001"}).status_code == 200
        assert client.get("/api/v1/stacks", headers={"Host": "10.0.0.5"}).status_code == 200
        assert client.get("/api/v1/stacks", headers={"Host": "127.0.0.1:5001"}).status_code == 400


def test_origin_is_checked_against_the_allowed_hosts_not_against_host(backend: MemoryBackend) -> None:
    with open_client(backend) as client:
        page = client.get("/")
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
        assert csrf
        headers = {"X-CSRF-Token": csrf.group(1)}
        # A page on another name refused even when it sends that name as Host too (as a rebinding page does).
        for origin in ("http://attacker.example:5001", "null", "file://", "http://127.0.0.1@attacker.example"):
            refused = client.post("/api/v1/stacks/shop/restart", headers={**headers, "Origin": origin})
            assert refused.status_code == 403, origin
        # Another allowed name for the same panel is fine: Host alone proves nothing either way.
        for origin in ("http://127.0.0.1:5001", "http://localhost:5001", "http://[::1]:5001"):
            ok = client.post("/api/v1/stacks/shop/restart", headers={**headers, "Origin": origin})
            assert ok.status_code == 200, origin
    assert [call[0] for call in backend.calls].count("restart") == 3


def test_with_any_host_allowed_the_origin_must_be_the_panel_itself(backend: MemoryBackend) -> None:
    with open_client(backend, "http://10.1.2.3:5001", allowed_hosts=["*"]) as client:
        assert client.get("/api/v1/stacks", headers={"Host": "whatever.example"}).status_code == 200
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', client.get("/").text)
        assert csrf
        headers = {"X-CSRF-Token": csrf.group(1)}
        cross = client.post("/api/v1/stacks/shop/restart", headers={**headers, "Origin": "http://evil.example"})
        assert cross.status_code == 403
        other_port = client.post("/api/v1/stacks/shop/restart", headers={**headers, "Origin": "http://10.1.2.3:8080"})
        assert other_port.status_code == 403
        same = client.post("/api/v1/stacks/shop/restart", headers={**headers, "Origin": "http://10.1.2.3:5001"})
        assert same.status_code == 200


@pytest.mark.parametrize("raw", ["http://panel.example", "panel.example:5001", "panel.example/", "*.example", ",", " "])
def test_allowed_hosts_must_be_bare_names(raw: str) -> None:
    with pytest.raises(ValueError, match="host"):
        AllowedHosts.parse(raw)


def _panel(environ: dict[str, str]) -> PanelSettings:
    """The panel's settings from ``environ`` alone (no config.json)."""
    return load_panel_settings({"CONFIG_PATH": "/nonexistent/config.json", **environ})


def test_allowed_hosts_default_to_loopback_names_on_loopback_and_any_elsewhere() -> None:
    on_loopback = allowed_hosts(_panel({}), "127.0.0.1")
    assert not on_loopback.any
    assert on_loopback.names == {"127.0.0.1", "localhost", "::1"}
    assert allowed_hosts(_panel({}), "127.0.0.2").names == {"127.0.0.1", "localhost", "::1", "127.0.0.2"}
    assert allowed_hosts(_panel({}), "0.0.0.0").any
    assert allowed_hosts(_panel({}), "::").any
    narrowed = allowed_hosts(_panel({"STATUS_PANEL_ALLOWED_HOSTS": " panel.example , 192.0.2.7,[::1]"}), "0.0.0.0")
    assert narrowed.names == {"panel.example", "192.0.2.7", "::1"}
    assert allowed_hosts(_panel({"STATUS_PANEL_ALLOWED_HOSTS": "*"}), "127.0.0.1").any


def _nowhere() -> str:
    return f"http://127.0.0.1:{free_port()}/mcp"


@contextmanager
def served_panel(
    tmp_path: Path,
    name: str,
    *,
    token: str | None = None,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> Iterator[tuple[Panel, httpx2.Client]]:
    """A served panel whose gateway is not there, and a client to it; the panel stops on the way out."""
    panel = start_panel(
        tmp_path, env={"COMPOSE_AGENT_URL": _nowhere(), **(env or {})}, token=token, name=name, args=args
    )
    try:
        with httpx2.Client(base_url=panel.base, headers=headers, timeout=timeout) as http:
            yield panel, http
    finally:
        panel.stop()


def test_the_served_panel_refuses_other_hosts_and_honours_the_variable(tmp_path: Path) -> None:
    with served_panel(tmp_path, "default") as (_, http):
        assert http.get("/api/v1/stacks/shop", headers={"Host": "attacker.example"}).status_code == 400
        assert http.get("/health", headers={"Host": "[::1]:5001"}).status_code == 200
    env = {"STATUS_PANEL_ALLOWED_HOSTS": "127.0.0.1,panel.example"}
    with served_panel(tmp_path, "narrowed", env=env) as (narrowed, http):
        assert http.get("/health", headers={"Host": "panel.example"}).status_code == 200
        assert http.get("/health", headers={"Host": "localhost"}).status_code == 400
    assert "answering to hosts: 127.0.0.1, panel.example" in narrowed.output()


# --- sessions: bound to the credential, a fixed lifetime, logout ---------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def log_in(client: TestClient, **fields: str) -> str:
    """Log in through the form like a browser; returns the new session's CSRF token."""
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf, page.text
    assert client.post("/login", data={"csrf": csrf.group(1), **fields}).status_code == 303
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', client.get("/").text)
    assert token
    return token.group(1)


def session_payload(client: TestClient) -> dict[str, object]:
    cookie = client.cookies["status_panel_session"]
    data = cookie.split(".", 1)[0]
    return dict(json.loads(base64.b64decode(data + "=" * (-len(data) % 4))))


def test_a_rotated_token_ends_the_sessions_it_logged_in(backend: MemoryBackend) -> None:
    authenticator = Authenticator(TOKEN)
    app = create_app(backend, authenticator, session_secret="r" * 32)
    with TestClient(app, base_url=BASE, follow_redirects=False) as browser:
        log_in(browser, token=TOKEN)
        assert browser.get("/api/v1/stacks").status_code == 200
        authenticator.set_token("the-new-token")  # what the Vault refresh does after a rotation
        assert browser.get("/api/v1/stacks").status_code == 401
        assert browser.get("/").headers["location"] == "/login?next=%2F"
        log_in(browser, token="the-new-token")
        assert browser.get("/api/v1/stacks").status_code == 200


def test_a_changed_password_ends_its_sessions_but_a_restart_with_the_same_secret_does_not(
    backend: MemoryBackend,
) -> None:
    first = create_app(backend, Authenticator(None, "admin", "old-pass"), session_secret="p" * 32)
    with TestClient(first, base_url=BASE, follow_redirects=False) as browser:
        log_in(browser, username="admin", password="old-pass")
        cookies = dict(browser.cookies)
    same = create_app(backend, Authenticator(None, "admin", "old-pass"), session_secret="p" * 32)
    with TestClient(same, base_url=BASE, follow_redirects=False, cookies=cookies) as browser:
        assert browser.get("/api/v1/stacks").status_code == 200
    changed = create_app(backend, Authenticator(None, "admin", "new-pass"), session_secret="p" * 32)
    with TestClient(changed, base_url=BASE, follow_redirects=False, cookies=cookies) as browser:
        assert browser.get("/api/v1/stacks").status_code == 401


def test_the_session_holds_a_fingerprint_never_the_credential(client: TestClient) -> None:
    log_in(client, token=TOKEN)
    by_token = session_payload(client)
    assert by_token["user"] == "token"
    assert re.fullmatch(r"[0-9a-f]{64}", str(by_token["fp"]))
    assert TOKEN not in json.dumps(by_token)
    client.cookies.clear()
    log_in(client, username="admin", password="s3cret-pass")
    by_password = session_payload(client)
    assert by_password["user"] == "admin"
    assert "s3cret-pass" not in json.dumps(by_password)


def test_a_login_lasts_twelve_hours_from_login_however_often_it_is_used(backend: MemoryBackend) -> None:
    clock = Clock()
    app = create_app(backend, Authenticator(TOKEN), session_secret="l" * 32, clock=clock)
    with TestClient(app, base_url=BASE, follow_redirects=False) as browser:
        log_in(browser, token=TOKEN)
        for _ in range(11):
            clock.now += 3600  # each answer re-signs the cookie: Starlette's own max_age slides
            assert browser.get("/api/v1/stacks").status_code == 200
        clock.now += 3599
        assert browser.get("/api/v1/stacks").status_code == 200
        clock.now += 1
        assert browser.get("/api/v1/stacks").status_code == 401
        assert "status_panel_session" not in browser.cookies  # the stale session was cleared


def test_logout_ends_the_session_and_every_copy_of_its_cookie(client: TestClient) -> None:
    csrf = log_in(client, token=TOKEN)
    copy = dict(client.cookies)
    assert client.post("/logout", headers={"X-CSRF-Token": csrf}).status_code == 303
    assert client.get("/api/v1/stacks").status_code == 401
    client.cookies.clear()
    client.cookies.update(copy)
    assert client.get("/api/v1/stacks").status_code == 401
    assert client.get("/").status_code == 303


def test_a_session_from_before_fingerprints_is_refused(backend: MemoryBackend) -> None:
    # Signed with the right secret but without the binding: what every cookie issued before looked like.
    legacy = base64.b64encode(json.dumps({"user": "token", "csrf": "x"}).encode())
    cookie = TimestampSigner("q" * 32).sign(legacy).decode()
    app = create_app(backend, Authenticator(TOKEN), session_secret="q" * 32)
    with TestClient(app, base_url=BASE, follow_redirects=False, cookies={"status_panel_session": cookie}) as c:
        assert c.get("/api/v1/stacks").status_code == 401


# --- the Secure cookie flag ----------------------------------------------------------------------


def test_https_only_reads_true_and_false_and_refuses_anything_else() -> None:
    assert _panel({}).https_only is False
    assert _panel({"STATUS_PANEL_HTTPS_ONLY": "false"}).https_only is False
    assert _panel({"STATUS_PANEL_HTTPS_ONLY": " True "}).https_only is True
    assert _panel({"STATUS_PANEL_HTTPS_ONLY": "1"}).https_only is True
    with pytest.raises(GatewayError, match="STATUS_PANEL_HTTPS_ONLY='sometimes' is not a boolean"):
        _panel({"STATUS_PANEL_HTTPS_ONLY": "sometimes"})


def test_the_served_panel_marks_its_cookie_secure_only_when_told(tmp_path: Path) -> None:
    def cookie_of(name: str, **env: str) -> str:
        with served_panel(tmp_path, name, token="t" * 24, env=env) as (_, http):
            return http.get("/login").headers["set-cookie"].lower()

    assert "; secure" not in cookie_of("plain")
    assert "; secure" in cookie_of("secure", STATUS_PANEL_HTTPS_ONLY="true")


def test_the_panel_will_not_start_with_a_bad_setting(tmp_path: Path) -> None:
    cases: list[tuple[dict[str, str], list[str], str]] = [
        ({"STATUS_PANEL_HTTPS_ONLY": "maybe"}, [], "STATUS_PANEL_HTTPS_ONLY"),
        ({"STATUS_PANEL_ALLOWED_HOSTS": "http://x.example"}, [], "STATUS_PANEL_ALLOWED_HOSTS"),
        ({"CONTROL_PLANE": "elsewhere"}, [], "CONTROL_PLANE"),
        ({}, ["--forwarded-allow-ips", "10.0.0.1,proxy.example"], "'proxy.example' is not an IP address"),
    ]
    for extra_env, extra_args, named in cases:
        env = _clean_env(CONFIG_PATH=str(tmp_path / "none.json"), COMPOSE_AGENT_URL=_nowhere(), **extra_env)
        result = subprocess.run(
            [sys.executable, "-m", "statuspanel", "serve", "--port", str(free_port()), *extra_args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert named in result.stderr


def test_the_plane_follows_the_mode_and_a_control_plane_that_disagrees_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    base = {"CONFIG_PATH": "/nonexistent/config.json"}
    with caplog.at_level(logging.WARNING, logger="statuspanel"):
        assert control_plane(load_panel_settings(base)) is ControlPlane.COMPOSE_AGENT
        assert (
            control_plane(load_panel_settings({**base, "CONTROL_PLANE": "compose_agent"})) is ControlPlane.COMPOSE_AGENT
        )
        legacy = {**base, "COMPOSE_AGENT_ENABLED": "false", "CONTROL_PLANE": "status_panel"}
        assert control_plane(load_panel_settings(legacy)) is ControlPlane.STATUS_PANEL
        assert caplog.records == []
        contradicting = load_panel_settings({**base, "CONTROL_PLANE": "status_panel"})
        assert control_plane(contradicting) is ControlPlane.COMPOSE_AGENT
    assert [r.getMessage() for r in caplog.records] == [
        "CONTROL_PLANE=status_panel is ignored: with compose_agent_enabled=true the commands are run by compose_agent"
    ]


# --- failed credentials: counted per connecting address, proxy headers only when trusted -----------


def test_the_served_panel_limits_failures_per_connecting_address_whatever_x_forwarded_for_says(
    tmp_path: Path,
) -> None:
    token = "t" * 24
    with served_panel(tmp_path, "direct", token=token) as (_, http):
        answers = [
            http.get(
                "/api/v1/stacks",
                headers={"Authorization": "Bearer guess", "X-Forwarded-For": f"198.51.100.{n}"},
            ).status_code
            for n in range(40)
        ]
        assert answers == [401] * 5 + [429] * 35
        # The valid token from the same address, and the probes, are not limited.
        assert http.get("/ui/dashboard", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert http.get("/health").status_code == 200


def test_x_forwarded_for_counts_only_from_the_proxies_the_operator_names(tmp_path: Path) -> None:
    args = ["--forwarded-allow-ips", "127.0.0.1"]
    with served_panel(tmp_path, "proxied", token="t" * 24, args=args) as (panel, http):
        for n in range(10):
            headers = {"Authorization": "Bearer guess", "X-Forwarded-For": f"198.51.100.{n}"}
            assert http.get("/api/v1/stacks", headers=headers).status_code == 401
        same = {"Authorization": "Bearer guess", "X-Forwarded-For": "198.51.100.0"}
        assert [http.get("/api/v1/stacks", headers=same).status_code for _ in range(5)] == [401] * 4 + [429]
    assert "trusting proxy headers from 127.0.0.1" in panel.output()


# --- security headers and the body limit ---------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/login", "/api/v1/stacks", "/health", "/static/panel.js", "/nowhere"])
def test_every_answer_carries_the_security_headers(client: TestClient, path: str) -> None:
    response = client.get(path, headers=bearer())
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-frame-options"] == "DENY"


def test_a_refused_host_gets_the_security_headers_too(backend: MemoryBackend) -> None:
    with open_client(backend, "http://attacker.example:5001") as attacker:
        response = attacker.get("/")
    assert response.status_code == 400
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_a_body_over_one_megabyte_gets_413_and_nothing_runs(client: TestClient, backend: MemoryBackend) -> None:
    padded = b'{"services": ["web"]' + b" " * (1024 * 1024) + b"}"
    response = client.post("/api/v1/stacks/shop/restart", content=padded, headers=bearer())
    assert response.status_code == 413
    assert "larger than 1048576 bytes" in response.json()["error"]

    def chunks() -> Iterator[bytes]:
        yield b'{"services": ["web"]'
        for _ in range(3):
            yield b" " * 512 * 1024
        yield b"}"

    chunked = client.post("/api/v1/stacks/shop/restart", content=chunks(), headers=bearer())
    assert chunked.status_code == 413
    assert backend.calls == []
    # Up to the limit is fine.
    fits = b'{"services": ["web"]' + b" " * (1024 * 1024 - 100) + b"}"
    assert client.post("/api/v1/stacks/shop/restart", content=fits, headers=bearer()).status_code == 200
    assert backend.calls == [("restart", {"project": "shop", "services": ["web"], "volumes": False})]


def test_a_huge_login_form_gets_413(client: TestClient) -> None:
    response = client.post("/login", data={"token": "x" * (2 * 1024 * 1024)})
    assert response.status_code == 413


def test_the_served_panel_answers_413_to_50_mb_whether_declared_or_chunked(tmp_path: Path) -> None:
    token = "t" * 24
    fifty_mb = 50 * 1024 * 1024

    def chunks() -> Iterator[bytes]:
        for _ in range(50):
            yield b" " * (fifty_mb // 50)

    auth = {"Authorization": f"Bearer {token}"}
    with served_panel(tmp_path, "big", token=token, headers=auth, timeout=60) as (panel, http):
        declared = http.post("/api/v1/stacks/shop/up", content=b" " * fifty_mb)
        assert declared.status_code == 413, declared.text
        chunked = http.post("/api/v1/stacks/shop/up", content=chunks())
        assert chunked.status_code == 413, chunked.text
        # A body within the limit reaches the proxy (here, a gateway that is not there).
        assert http.post("/api/v1/stacks/shop/up", content=b"{}").status_code == 503
    assert panel.output().count("refused a request body over 1048576 bytes") == 2
