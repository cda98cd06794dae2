"""The panel logs in the gateway's people, acts for them within their grants, and the gateway audits them.

The panel is started as the deployment runs it: its state folder is the one the gateway shares with
it (``<gateway state>/panel``), so it reads the copy of the people the gateway keeps there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory
from tests.gateway.oauth_fixtures import PASSWORD, run_users
from tests.polling import eventually
from tests.statuspanel.conftest import Gateway, start_panel

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def log_in(browser: httpx2.AsyncClient, username: str, password: str) -> tuple[int, str | None]:
    """The login form as a browser sends it: the answer's status, and the session's CSRF token if in."""
    form = re.search(r'name="csrf" value="([^"]+)"', (await browser.get("/login")).text)
    assert form
    fields = {"csrf": form.group(1), "username": username, "password": password}
    answer = await browser.post("/login", data=fields)
    if answer.status_code != 303:
        return answer.status_code, None
    page = re.search(r'<meta name="csrf-token" content="([^"]+)"', (await browser.get("/")).text)
    return 303, page.group(1) if page else None


def audit_of(gateway: Gateway) -> list[dict[str, Any]]:
    audit = Path(gateway.env["COMPOSE_AGENT_STATE_DIR"]) / "audit.log"
    return [json.loads(line) for line in audit.read_text().splitlines()]


async def test_people_log_in_to_the_panel_and_act_within_their_grants(
    stacks: StackFactory, gateway: Gateway, tmp_path: Path
) -> None:
    mine = stacks.make(WEB_WORKER, files=STACK_FILES)
    state = Path(gateway.env["COMPOSE_AGENT_STATE_DIR"])
    for name, grant in (("nina", f"compose:write:{mine}"), ("otto", "compose:read")):
        done = run_users(state, "add", name, "--password-stdin", "--grant", grant, stdin=PASSWORD + "\n")
        assert done.returncode == 0, done.stderr
    shared = state / "panel" / "people.json"
    await eventually(lambda: _now(shared.exists()), timeout=10, what="the gateway sharing the people with the panel")
    env = {"COMPOSE_AGENT_URL": gateway.mcp_url, "COMPOSE_AGENT_STATE_DIR": str(state / "panel")}
    panel = start_panel(tmp_path, env=env, token=gateway.panel_token, name="people-panel")
    try:
        async with (
            httpx2.AsyncClient(base_url=panel.base, timeout=120) as nina,
            httpx2.AsyncClient(base_url=panel.base, timeout=120) as otto,
        ):
            assert (await log_in(otto, "otto", "not otto's password"))[0] == 401
            status, nina_csrf = await log_in(nina, "nina", PASSWORD)
            assert status == 303 and nina_csrf
            started = await nina.post(f"/api/v1/stacks/{mine}/up", headers={"X-CSRF-Token": nina_csrf})
            assert started.status_code == 200, started.text
            status, otto_csrf = await log_in(otto, "otto", PASSWORD)
            assert status == 303 and otto_csrf
            assert (await otto.get(f"/api/v1/stacks/{mine}")).status_code == 200  # otto may look
            stopped = await otto.post(f"/api/v1/stacks/{mine}/stop", headers={"X-CSRF-Token": otto_csrf})
            assert stopped.status_code == 403 and f"compose:write:{mine}" in stopped.json()["error"]
            # The operator removes nina: her session ends within seconds.
            assert run_users(state, "remove", "nina").returncode == 0

            async def logged_out() -> bool:
                answer = await nina.get("/")
                return answer.status_code == 303 and "/login" in answer.headers["location"]

            await eventually(logged_out, timeout=10, interval=0.2, what="nina's panel session ending")
    finally:
        panel.stop()
    lines = audit_of(gateway)
    up = [line for line in lines if line["tool"] == "up" and line["arguments"].get("project") == mine]
    assert [(line["phase"], line["on_behalf_of"]) for line in up] == [("intent", "nina"), ("outcome", "nina")]
    stop = [line for line in lines if line["tool"] == "stop"]
    assert [(line["outcome"], line["on_behalf_of"]) for line in stop] == [("refused", "otto")]
    assert {line["caller"] for line in up + stop} == {"status_panel_token"}


async def _now(value: bool) -> bool:
    return value
