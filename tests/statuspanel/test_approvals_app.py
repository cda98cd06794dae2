"""The panel's approvals through Starlette's TestClient, over the in-memory backend: who may press what.

The same through a real gateway, a real panel and Chromium is in test_approvals_ui.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp.types import CallToolResult, TextContent
from starlette.testclient import TestClient

from gateway.api import ApprovalInfo, People
from gateway.auth.documents import FileDocument
from gateway.auth.people import PeopleAdmin
from gateway.errors import APPROVAL_META_KEY, ERROR_META_KEY
from statuspanel.app import create_app
from statuspanel.credentials import Authenticator
from statuspanel.errors import ApprovalNeeded
from statuspanel.toolerrors import classify_tool_result
from tests.statuspanel.conftest import APP_BASE, APP_TOKEN, MemoryBackend, bearer

PASSWORD = "correct horse battery staple"
ALICES = "a" * 32  # alice asked for it
AGENTS = "b" * 32  # the agent's token asked for it, on another stack


def waiting(approval_id: str, project: str, person: str | None) -> ApprovalInfo:
    return ApprovalInfo(
        id=approval_id,
        status="pending",
        tool="down",
        project=project,
        arguments={"project": project, "volumes": True},
        caller="status_panel_token" if person else "compose_agent_token",
        on_behalf_of=person,
        plan=f"What down does to '{project}':\n  - DELETES named volume {project}_data (used by db) and its data",
        requested_at="2026-12-01T10:00:00Z",
        expires_at="2026-12-01T11:00:00Z",
    )


@pytest.fixture
def people(tmp_path: Path) -> People:
    document = FileDocument(tmp_path / "people.json")

    async def add() -> People:
        admin = PeopleAdmin(document)
        await admin.add("bob", PASSWORD, ["compose:approve"])
        await admin.add("alice", PASSWORD, ["compose:write", "compose:approve:shop"])
        loaded = People(document)
        await loaded.load()
        return loaded

    return anyio.run(add)


@pytest.fixture
def panel(backend: MemoryBackend, people: People) -> Iterator[TestClient]:
    backend.waiting = {ALICES: waiting(ALICES, "shop", "alice"), AGENTS: waiting(AGENTS, "blog", None)}
    authenticator = Authenticator(APP_TOKEN, "admin", "s3cret-pass", people=people)
    app = create_app(backend, authenticator, session_secret="x" * 32)
    with TestClient(app, base_url=APP_BASE, follow_redirects=False) as client:
        yield client


def log_in(client: TestClient, **fields: str) -> str:
    """Log in through the form, as someone new (a browser of their own); the new session's CSRF token."""
    client.cookies.clear()
    form = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
    assert form
    assert client.post("/login", data={"csrf": form.group(1), **fields}).status_code == 303
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', client.get("/").text)
    assert token
    return token.group(1)


def decide(client: TestClient, approval: str, csrf: str, decision: str = "approve") -> tuple[int, str]:
    answer = client.post(f"/api/v1/approvals/{approval}/{decision}", headers={"X-CSRF-Token": csrf})
    return answer.status_code, answer.json().get("error") or answer.json().get("status")


def test_only_a_person_logged_in_as_themselves_decides(panel: TestClient, backend: MemoryBackend) -> None:
    refused = panel.post(f"/api/v1/approvals/{AGENTS}/approve", headers=bearer())
    assert refused.status_code == 403 and "only a person approves" in refused.json()["error"]
    csrf = log_in(panel, token=APP_TOKEN)  # the panel's token through the form: still nobody
    assert decide(panel, AGENTS, csrf)[0] == 403
    csrf = log_in(panel, username="admin", password="s3cret-pass")  # the configured login: not one of the people
    assert decide(panel, AGENTS, csrf)[0] == 403
    assert backend.decided == []
    csrf = log_in(panel, username="bob", password=PASSWORD)
    no_csrf = panel.post(f"/api/v1/approvals/{AGENTS}/approve")
    assert no_csrf.status_code == 403 and backend.decided == []
    assert decide(panel, AGENTS, csrf) == (200, "approved")
    assert decide(panel, ALICES, csrf, "reject") == (200, "rejected")
    assert backend.decided == [(AGENTS, True, "bob"), (ALICES, False, "bob")]


def test_the_page_lists_each_change_with_its_plan_and_says_who_may_press_what(
    panel: TestClient, backend: MemoryBackend
) -> None:
    seen_by_token = panel.get("/approvals", headers=bearer()).text
    assert "DELETES named volume shop_data" in seen_by_token and "DELETES named volume blog_data" in seen_by_token
    assert seen_by_token.count('data-testid="approval-why-not">Log in as one of the people') == 2
    log_in(panel, username="alice", password=PASSWORD)
    page = panel.get("/approvals").text
    buttons = re.findall(r'data-testid="(approve|reject)-(\w+)"(\s+disabled title="([^"]*)")?', page)
    assert {(kind, which, why) for kind, which, _, why in buttons} == {
        ("approve", ALICES, "You asked for this change: another person decides it."),
        ("reject", ALICES, "You asked for this change: another person decides it."),
        ("approve", AGENTS, "You do not hold compose:approve for blog."),
        ("reject", AGENTS, "You do not hold compose:approve for blog."),
    }
    # Pressing anyway changes nothing: the gateway (here, its stand-in) refuses her own.
    csrf = log_in(panel, username="alice", password=PASSWORD)
    assert decide(panel, ALICES, csrf)[0] == 403
    log_in(panel, username="bob", password=PASSWORD)
    bobs = panel.get(f"/approvals/{AGENTS}").text
    assert f'data-testid="approve-{AGENTS}">Approve' in bobs and "blog" in bobs and "shop_data" not in bobs
    # The badge counts what waits, on every page that refreshes.
    assert re.search(r'data-testid="approvals-badge"[^>]*>2<', panel.get("/").text)
    assert 'data-pending-approvals="2"' in panel.get("/ui/dashboard").text
    backend.waiting.clear()
    assert re.search(r'data-testid="approvals-badge"[^>]*hidden>0<', panel.get("/").text)
    assert "Nothing waits for approval" in panel.get("/approvals").text


def test_bad_ids_and_decisions_are_refused_at_the_edge(panel: TestClient, backend: MemoryBackend) -> None:
    assert panel.get("/api/v1/approvals/../../etc", headers=bearer()).status_code == 404
    assert panel.get("/api/v1/approvals/not-an-id", headers=bearer()).status_code == 400
    assert panel.get(f"/api/v1/approvals/{'c' * 32}", headers=bearer()).status_code == 404
    assert panel.get(f"/approvals/{'c' * 32}", headers=bearer()).status_code == 404
    listing = panel.get("/api/v1/approvals", headers=bearer()).json()["approvals"]
    assert {a["id"] for a in listing} == {ALICES, AGENTS}
    csrf = log_in(panel, username="bob", password=PASSWORD)
    assert decide(panel, AGENTS, csrf, "delete")[0] == 404
    assert decide(panel, "ZZ" * 16, csrf)[0] == 400
    assert backend.decided == []


def test_only_the_person_who_asked_in_the_panel_sends_it_again_once_approved(
    panel: TestClient, backend: MemoryBackend
) -> None:
    backend.waiting[ALICES] = backend.waiting[ALICES].model_copy(update={"status": "approved", "decided_by": "bob"})
    backend.waiting[AGENTS] = backend.waiting[AGENTS].model_copy(update={"status": "approved", "decided_by": "bob"})
    csrf = log_in(panel, username="bob", password=PASSWORD)
    assert 'data-testid="run-' not in panel.get("/approvals").text
    bobs = panel.post(f"/api/v1/approvals/{ALICES}/run", headers={"X-CSRF-Token": csrf})
    assert bobs.status_code == 403 and "only the person who asked" in bobs.json()["error"]
    csrf = log_in(panel, username="alice", password=PASSWORD)
    page = panel.get("/approvals").text
    assert f'data-testid="run-{ALICES}"' in page and f'data-testid="run-{AGENTS}"' not in page
    # The agent's own approval is the agent's to spend, not the panel's.
    assert panel.post(f"/api/v1/approvals/{AGENTS}/run", headers={"X-CSRF-Token": csrf}).status_code == 403
    assert backend.sent_approvals == []
    sent = panel.post(f"/api/v1/approvals/{ALICES}/run", headers={"X-CSRF-Token": csrf})
    assert sent.status_code == 200 and sent.json()["action"] == "down"
    assert backend.calls[-1] == ("down", {"project": "shop", "services": None, "volumes": True})
    assert backend.sent_approvals == [ALICES] and backend.acted_for[-1] == "alice"


def test_a_call_that_waits_for_a_person_answers_409_with_the_approvals_page() -> None:
    result = CallToolResult(
        content=[TextContent(type="text", text="up on 'shop' waits for a person's approval")],
        is_error=True,
        _meta={ERROR_META_KEY: "approval_required", APPROVAL_META_KEY: ALICES},
    )
    error = classify_tool_result(result)
    assert isinstance(error, ApprovalNeeded) and error.status_code == 409
    assert error.to_json() == {
        "error": "up on 'shop' waits for a person's approval",
        "approval_required": True,
        "approval": ALICES,
        "page": f"/approvals/{ALICES}",
    }
