"""The panel's own pieces through Starlette's TestClient, over an in-memory backend: routes, auth, validation."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from gateway.api import FailureLimiter, PsResult, ServiceStatus, StackInfo, StackList
from statuspanel.app import create_app
from statuspanel.credentials import Authenticator
from statuspanel.errors import GatewayUnavailable, for_kind
from statuspanel.state import ACTIONS
from tests.statuspanel.conftest import APP_BASE, APP_TOKEN, CONFIRM_TOKEN, MemoryBackend, bearer

TOKEN = APP_TOKEN
BASE = APP_BASE


def login(client: TestClient, **fields: str) -> tuple[int, str]:
    """Log in through the form, like a browser; returns the status and the CSRF token of the new session."""
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf, page.text
    response = client.post("/login", data={"csrf": csrf.group(1), **fields})
    if response.status_code != 303:
        return response.status_code, ""
    dashboard = client.get("/")
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', dashboard.text)
    assert token
    return 303, token.group(1)


def test_health_capabilities_and_metrics_answer_without_a_token(client: TestClient) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["compose_agent"] == "up"
    caps = client.get("/capabilities").json()
    assert caps["compose_agent"] is True
    assert caps["legacy_mode"] is False
    assert caps["control_plane"] == "compose_agent"
    assert caps["version"]
    assert "logs" in caps["features"]
    metrics = client.get("/api/v1/metrics").json()
    for key in ("status_panel_count", "compose_agent_count", "total_count", "last_control_plane"):
        assert key in metrics


def test_health_stays_200_when_the_gateway_is_down(client: TestClient, backend: MemoryBackend) -> None:
    backend.unavailable = True
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["compose_agent"] == "down"


def test_the_api_needs_a_bearer_token(client: TestClient) -> None:
    response = client.get("/api/v1/stacks")
    assert response.status_code == 401
    assert "Bearer" in response.headers["www-authenticate"]
    assert "error" in response.json()
    assert client.get("/api/v1/stacks", headers=bearer("wrong")).status_code == 401
    assert client.get("/api/v1/stacks", headers={"Authorization": "Basic " + TOKEN}).status_code == 401
    assert client.get("/api/v1/stacks", headers=bearer()).status_code == 200


def test_pages_redirect_to_login_without_a_session(client: TestClient) -> None:
    response = client.get("/stacks/shop/logs")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fstacks%2Fshop%2Flogs"
    assert client.get("/static/panel.css").status_code == 200


def test_stack_route_returns_exactly_the_ps_result(client: TestClient) -> None:
    data = client.get("/api/v1/stacks/shop", headers=bearer()).json()
    # policy: the guard's verdict (null here); nodes: a swarm's nodes (null for a Compose stack);
    # host: the host it is on (local here)
    assert set(data) == {"project", "host", "services", "policy", "nodes"}
    assert data["nodes"] is None and data["host"] == "local"
    assert data["project"] == "shop"
    assert {s["service"] for s in data["services"]} == {"web", "db"}


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/api/v1/stacks/Shop", "invalid stack name"),
        ("/api/v1/stacks/-shop", "invalid stack name"),
        ("/api/v1/stacks/shop/logs?tail=0", "tail must be from 1 to 10000"),
        ("/api/v1/stacks/shop/logs?tail=10001", "tail must be from 1 to 10000"),
        ("/api/v1/stacks/shop/logs?tail=many", "whole number"),
        ("/api/v1/stacks/shop/logs?grep=(", "not a valid regular expression"),
        ("/api/v1/stacks/shop/logs?since=yesterday", "since"),
        ("/api/v1/stacks/shop/logs?services=../etc", "invalid service name"),
        ("/api/v1/stacks/shop/logs?colour=red", "unknown query parameter"),
    ],
)
def test_bad_input_is_refused_at_the_edge_with_a_hint(
    client: TestClient, backend: MemoryBackend, path: str, fragment: str
) -> None:
    response = client.get(path, headers=bearer())
    assert response.status_code == 400
    assert fragment in response.json()["error"]
    assert backend.calls == []


def test_unknown_stack_is_404_with_the_known_ones(client: TestClient) -> None:
    response = client.get("/api/v1/stacks/nope", headers=bearer())
    assert response.status_code == 404
    assert "known stacks: blog, shop" in response.json()["error"]


def test_gateway_unavailable_is_503(client: TestClient, backend: MemoryBackend) -> None:
    backend.unavailable = True
    response = client.get("/api/v1/stacks", headers=bearer())
    assert response.status_code == 503
    assert response.json()["error"] == "compose-agent unavailable"


def test_an_unreachable_engine_or_gateway_answers_503_naming_the_part_and_why() -> None:
    engine = for_kind("engine_unavailable", "no socket at /var/run/docker.sock")
    assert engine.status_code == 503
    assert engine.to_json() == {"error": "docker engine unavailable", "detail": "no socket at /var/run/docker.sock"}
    gateway = GatewayUnavailable("no answer within 30s")
    assert gateway.status_code == 503
    assert gateway.to_json() == {"error": "compose-agent unavailable", "detail": "no answer within 30s"}


def test_logs_pass_filters_and_unix_since_on_as_given(client: TestClient, backend: MemoryBackend) -> None:
    response = client.get("/api/v1/stacks/shop/logs?services=web&tail=5&grep=line&since=1764190800", headers=bearer())
    assert response.status_code == 200
    assert response.json()["lines"] == 5
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", response.headers["x-panel-time"])
    assert backend.calls[-1] == (
        "logs",
        {"project": "shop", "services": ["web"], "tail": 5, "since": "1764190800", "grep": "line"},
    )


def test_actions_take_services_and_down_takes_volumes(client: TestClient, backend: MemoryBackend) -> None:
    assert client.post("/api/v1/stacks/shop/restart", json={"services": ["web"]}, headers=bearer()).json()["ok"]
    assert client.post("/api/v1/stacks/shop/down", json={"volumes": True}, headers=bearer()).status_code == 200
    assert client.post("/api/v1/stacks/shop/up", headers=bearer()).status_code == 200
    assert backend.calls == [
        ("restart", {"project": "shop", "services": ["web"], "volumes": False}),
        ("down", {"project": "shop", "services": None, "volumes": True}),
        ("up", {"project": "shop", "services": None, "volumes": False}),
    ]


@pytest.mark.parametrize(
    ("action", "body", "fragment"),
    [
        ("down", {"services": ["web"]}, "unknown field(s) services for down"),
        ("down", {"volumes": "yes"}, '"volumes" must be true or false'),
        ("restart", {"services": "web;rm"}, "invalid service name"),
        ("restart", [1, 2], "must be a JSON object"),
    ],
)
def test_bad_action_bodies_are_400(client: TestClient, action: str, body: object, fragment: str) -> None:
    response = client.post(f"/api/v1/stacks/shop/{action}", json=body, headers=bearer())
    assert response.status_code == 400
    assert fragment in response.json()["error"]


def test_an_unknown_action_is_404_and_names_the_real_ones(client: TestClient) -> None:
    response = client.post("/api/v1/stacks/shop/explode", headers=bearer())
    assert response.status_code == 404
    assert "up, down, restart, start, stop" in response.json()["error"]


def test_login_with_the_token_sets_a_strict_httponly_cookie(client: TestClient) -> None:
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf
    response = client.post("/login?next=/stacks/shop/logs", data={"csrf": csrf.group(1), "token": TOKEN})
    assert response.status_code == 303
    assert response.headers["location"] == "/stacks/shop/logs"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=strict" in cookie
    assert client.get("/api/v1/stacks").status_code == 200


def test_login_with_username_and_password(client: TestClient) -> None:
    status, _ = login(client, username="admin", password="s3cret-pass")
    assert status == 303
    assert client.get("/").status_code == 200


def test_login_never_redirects_off_site(client: TestClient) -> None:
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf
    response = client.post("/login?next=//evil.example/", data={"csrf": csrf.group(1), "token": TOKEN})
    assert response.headers["location"] == "/"


def test_a_session_post_needs_the_csrf_header(client: TestClient, backend: MemoryBackend) -> None:
    status, csrf = login(client, token=TOKEN)
    assert status == 303
    refused = client.post("/api/v1/stacks/shop/restart")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["error"]
    wrong = client.post("/api/v1/stacks/shop/restart", headers={"X-CSRF-Token": "nope"})
    assert wrong.status_code == 403
    assert not [call for call in backend.calls if call[0] == "restart"]
    ok = client.post("/api/v1/stacks/shop/restart", headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200


def test_a_cross_site_post_is_refused_even_with_the_token(client: TestClient) -> None:
    _, csrf = login(client, token=TOKEN)
    response = client.post(
        "/api/v1/stacks/shop/restart", headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"}
    )
    assert response.status_code == 403


def test_wrong_logins_are_rate_limited_but_the_right_token_still_logs_in(backend: MemoryBackend) -> None:
    authenticator = Authenticator(TOKEN, "admin", "s3cret-pass")
    app = create_app(backend, authenticator, session_secret="y" * 32, limiter=FailureLimiter(limit=5, window=60))
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        for _ in range(5):
            assert login(client, token="guess")[0] == 401
        page = client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf
        limited = client.post("/login", data={"csrf": csrf.group(1), "token": "guess"})
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert "Try again in" in limited.text
        # A password can be guessed, so while limited it is refused unchecked, right or wrong.
        assert login(client, username="admin", password="wrong")[0] == 429
        assert login(client, username="admin", password="s3cret-pass")[0] == 429
        # Someone else's failures never lock out the holder of the token.
        assert login(client, token=TOKEN)[0] == 303
        assert client.get("/api/v1/stacks").status_code == 200


def test_wrong_bearer_tokens_are_limited_but_a_valid_one_and_health_are_not(backend: MemoryBackend) -> None:
    app = create_app(backend, Authenticator(TOKEN), session_secret="y" * 32, limiter=FailureLimiter(limit=5, window=60))
    with TestClient(app, base_url=BASE, follow_redirects=False, client=("10.0.0.7", 40000)) as client:
        for _ in range(5):
            assert client.get("/api/v1/stacks", headers=bearer("guess")).status_code == 401
        limited = client.get("/api/v1/stacks", headers=bearer("guess"))
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert client.get("/api/v1/stacks", headers=bearer()).status_code == 200
        assert client.post("/api/v1/stacks/shop/restart", headers=bearer()).status_code == 200
        assert client.get("/health", headers=bearer("guess")).status_code == 200
        # No credential at all is not a failure: it is asked for one.
        assert client.get("/api/v1/stacks").status_code == 401
    # Failures are counted per client address: another address is not limited.
    with TestClient(app, base_url=BASE, follow_redirects=False, client=("10.0.0.8", 40000)) as other:
        assert other.get("/api/v1/stacks", headers=bearer("guess")).status_code == 401
    assert [call[0] for call in backend.calls].count("restart") == 1


def test_the_limiter_stays_bounded_and_a_flood_of_new_addresses_does_not_lift_a_limit() -> None:
    limiter = FailureLimiter(limit=5, window=60, clock=lambda: 1000.0, max_clients=10)
    for _ in range(5):
        limiter.record_failure("10.0.0.1")
    for n in range(500):
        limiter.record_failure(f"192.0.2.{n % 250}.{n}")
    assert len(limiter) == 10
    assert limiter.retry_after("10.0.0.1") == 60


def test_rate_limiter_forgets_failures_after_the_window() -> None:
    now = [1000.0]
    limiter = FailureLimiter(limit=2, window=60, clock=lambda: now[0])
    limiter.record_failure("10.0.0.1")
    limiter.record_failure("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 60
    assert limiter.retry_after("10.0.0.2") is None
    now[0] += 30
    assert limiter.retry_after("10.0.0.1") == 30
    now[0] += 30
    assert limiter.retry_after("10.0.0.1") is None


def test_logout_ends_the_session(client: TestClient) -> None:
    _, csrf = login(client, token=TOKEN)
    assert client.post("/logout", headers={"X-CSRF-Token": csrf}).status_code == 303
    assert client.get("/api/v1/stacks").status_code == 401


def test_dashboard_shows_stacks_services_and_counts(client: TestClient) -> None:
    login(client, token=TOKEN)
    html = client.get("/").text
    assert 'data-testid="stack-shop"' in html
    assert 'data-testid="state-shop-web"' in html
    assert "127.0.0.1:8080-&gt;80/tcp" in html
    assert 'data-testid="metric-compose-agent"' in html
    assert 'data-testid="gateway-banner"' not in html


def test_dashboard_shows_a_banner_when_the_gateway_is_unreachable(client: TestClient, backend: MemoryBackend) -> None:
    login(client, token=TOKEN)
    backend.unavailable = True
    html = client.get("/ui/dashboard").text
    assert 'data-testid="gateway-banner"' in html
    assert "unreachable" in html


def test_open_mode_lets_local_api_clients_in_but_not_cross_site_posts(backend: MemoryBackend) -> None:
    app = create_app(backend, Authenticator(), session_secret="z" * 32)
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        assert client.get("/api/v1/stacks").status_code == 200
        assert client.post("/api/v1/stacks/shop/restart").status_code == 200
        cross = client.post("/api/v1/stacks/shop/restart", headers={"Origin": "https://evil.example"})
        assert cross.status_code == 403


def test_each_action_names_the_person_logged_in_and_a_bearer_names_no_one(backend: MemoryBackend) -> None:
    app = create_app(backend, Authenticator(TOKEN, "alice", "s3cret-pass"), session_secret="w" * 32)
    with TestClient(app, base_url=BASE, follow_redirects=False) as browser:
        _, csrf = login(browser, username="alice", password="s3cret-pass")
        assert browser.post("/api/v1/stacks/shop/restart", headers={"X-CSRF-Token": csrf}).status_code == 200
        browser.cookies.clear()
        _, csrf = login(browser, token=TOKEN)
        assert browser.post("/api/v1/stacks/shop/stop", headers={"X-CSRF-Token": csrf}).status_code == 200
    with TestClient(app, base_url=BASE, follow_redirects=False) as script:
        assert script.post("/api/v1/stacks/shop/start", headers=bearer()).status_code == 200
    open_app = create_app(backend, Authenticator(), session_secret="v" * 32)
    with TestClient(open_app, base_url=BASE, follow_redirects=False) as local:
        assert local.post("/api/v1/stacks/shop/up").status_code == 200
    assert [call[0] for call in backend.calls if call[0] in ACTIONS] == ["restart", "stop", "start", "up"]
    assert backend.acted_for == ["alice", "token", None, "local"]


# --- plans, versions, rollback and the operator's confirmations ----------------------------------


def test_the_plan_route_answers_the_plan_tools_object_and_changes_nothing(
    client: TestClient, backend: MemoryBackend
) -> None:
    plan = client.get("/api/v1/stacks/shop/plan", headers=bearer())
    assert plan.status_code == 200, plan.text
    body = plan.json()
    assert set(body) == {"project", "version", "actions", "policy", "down", "warnings"}
    assert [(a["service"], a["action"]) for a in body["actions"]] == [("db", "unchanged"), ("web", "unchanged")]
    assert body["down"]["containers"] == ["shop-db-1", "shop-web-1"]
    assert client.get("/api/v1/stacks/nope/plan", headers=bearer()).status_code == 404
    assert client.get("/api/v1/stacks/Bad!/plan", headers=bearer()).status_code == 400
    assert [call[0] for call in backend.calls] == ["plan", "plan"]


def test_versions_are_listed_and_a_rollback_names_its_version_and_the_person(
    client: TestClient, backend: MemoryBackend
) -> None:
    versions = client.get("/api/v1/stacks/shop/versions", headers=bearer()).json()
    assert versions["current"] == 2 and [v["version"] for v in versions["versions"]] == [1, 2]
    _, csrf = login(client, username="admin", password="s3cret-pass")
    back = client.post("/api/v1/stacks/shop/rollback", json={"version": 1}, headers={"X-CSRF-Token": csrf})
    assert back.status_code == 200, back.text
    assert back.json()["version"] == 1 and back.json()["action"] == "rollback"
    assert backend.calls[-1] == ("rollback", {"project": "shop", "version": 1})
    assert backend.acted_for[-1] == "admin"
    assert client.post("/api/v1/stacks/shop/rollback", headers={"X-CSRF-Token": csrf}).status_code == 200
    assert backend.calls[-1] == ("rollback", {"project": "shop", "version": None})
    assert client.post("/api/v1/stacks/shop/rollback", json={"version": 1}).status_code == 403  # no CSRF


@pytest.mark.parametrize(
    "body", [{"version": "1"}, {"version": True}, {"version": 0}, {"version": 1.5}, {"versions": 1}, {"confirm": 7}]
)
def test_a_malformed_rollback_is_400_and_nothing_runs(client: TestClient, backend: MemoryBackend, body: object) -> None:
    response = client.post("/api/v1/stacks/shop/rollback", json=body, headers=bearer())
    assert response.status_code == 400, response.text
    assert not [call for call in backend.calls if call[0] == "rollback"]


def test_a_confirmation_the_operator_asks_for_is_409_with_the_plan_and_the_same_call_with_its_token_acts(
    client: TestClient, backend: MemoryBackend
) -> None:
    backend.confirm_tools = {"down"}
    first = client.post("/api/v1/stacks/shop/down", json={"volumes": True}, headers=bearer())
    assert first.status_code == 409, first.text
    body = first.json()
    assert body["confirmation_required"] is True and body["confirm"] == CONFIRM_TOKEN
    assert "would remove: shop-web-1" in body["error"]
    for token, status in (("not a token!", 400), ("wrong-token", 403), (CONFIRM_TOKEN, 200)):
        again = client.post("/api/v1/stacks/shop/down", json={"volumes": True, "confirm": token}, headers=bearer())
        assert again.status_code == status, (token, again.text)
    assert [call[0] for call in backend.calls].count("down") == 3  # the malformed token never reached it


# --- the stack page, and swarm stacks --------------------------------------------------------------


def test_a_stacks_page_lists_its_versions_with_a_rollback_button_for_each_earlier_one(client: TestClient) -> None:
    login(client, token=TOKEN)
    page = client.get("/stacks/shop")
    assert page.status_code == 200
    html = page.text
    assert 'data-testid="stack-shop"' in html and 'data-testid="state-shop-web"' in html
    assert 'data-testid="version-2"' in html and 'data-testid="version-1"' in html
    assert 'data-testid="rollback-1"' in html and 'data-testid="rollback-2"' not in html  # not the current one
    assert html.index('data-testid="version-2"') < html.index('data-testid="version-1"')  # newest first
    assert 'data-refresh="/ui/stacks/shop"' in html
    assert 'data-testid="confirm-rollback"' in html
    fragment = client.get("/ui/stacks/shop").text
    assert 'data-testid="rollback-1"' in fragment and "<html" not in fragment
    missing = client.get("/stacks/nope")
    assert missing.status_code == 404 and "not found" in missing.text
    assert client.get("/stacks/Bad!").status_code == 400
    assert 'href="/stacks/shop"' in client.get("/").text  # the dashboard links to it


class SwarmBackend(MemoryBackend):
    """Beside the two Compose stacks, a swarm stack of two replicas on two nodes, one of them failing."""

    async def list_stacks(self) -> StackList:
        listing = await super().list_stacks()
        swarm = StackInfo(name="edge", external=False, containers=3, running=1, target="swarm")
        return StackList(stacks=[*listing.stacks, swarm])

    async def ps(self, project: str, host: str | None = None) -> PsResult:
        if project != "edge":
            return await super().ps(project)

        def task(slot: int, node: str, state: str, desired: str, error: str | None = None) -> ServiceStatus:
            return ServiceStatus(
                service="web",
                container=f"edge_web.{slot}.task{slot}{state}",
                state=state,
                image="busybox:latest",
                node=node,
                desired_state=desired,
                error=error,
            )

        rows = [
            task(1, "node-a", "running", "running"),
            task(2, "node-b", "failed", "running", "task: non-zero exit (1)"),
            ServiceStatus(service="worker", state="stopped", image="busybox:latest", desired_state="shutdown"),
        ]
        return PsResult(project=project, services=rows)


def test_a_swarm_stack_shows_each_service_with_its_replicas_and_their_nodes() -> None:
    backend = SwarmBackend()
    app = create_app(backend, Authenticator(), session_secret="s" * 32)
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        html = client.get("/ui/dashboard").text
    card = html[html.index('data-testid="stack-edge"') :]
    assert 'data-target="swarm"' in card
    assert re.search(r'data-testid="target-edge"[^>]*>swarm · 2 nodes<', card)
    assert re.search(r'data-testid="replicas-edge-web">1/2 running<', card)
    assert re.search(r'data-testid="replicas-edge-worker">stopped<', card)
    assert card.count('data-testid="task-edge-web"') == 2
    assert ">node-a<" in card and ">node-b<" in card and "task: non-zero exit (1)" in card
    assert 'data-testid="stack-count-edge">1/2 running<' in card
    # One row per service, with its buttons once, not once per replica.
    assert card.count('data-testid="action-edge-web-restart"') == 1
    # Compose stacks keep one row per container.
    assert 'data-testid="state-shop-web"' in html and 'data-target="compose"' in html
