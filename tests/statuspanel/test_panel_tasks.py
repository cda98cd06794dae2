"""The panel's long actions as gateway tasks: a handle at once, progress while Compose works, the person's own.

Real processes: the panel and ``compose-agent serve``, over a real engine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import StackFactory
from tests.polling import eventually
from tests.processes import argv, compose_pids
from tests.statuspanel.conftest import Gateway, Panel, start_panel
from tests.statuspanel.test_gateway_proxy import api, log_in

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

ASYNC = {"Prefer": "respond-async"}

# The panel's long action here is `down`: the service's PID 1 (no init) ignores SIGTERM, so Compose
# waits out the whole grace period before the engine kills it.
STUBBORN = """
services:
  stubborn:
    image: {image}
    command: ["sleep", "3600"]
    stop_grace_period: GRACE
"""


def stubborn(grace: str) -> str:
    return STUBBORN.replace("GRACE", grace)


def compose_down_pids(project: str) -> list[int]:
    return [pid for pid in compose_pids(project) if b"down" in argv(pid)]


async def up(panel: Panel, name: str) -> None:
    async with api(panel) as client:
        response = await client.post(f"/api/v1/stacks/{name}/up")
        assert response.status_code == 200, response.text


async def test_a_long_action_answers_with_a_task_its_person_follows_alone(
    stacks: StackFactory, gateway: Gateway, tmp_path: Path
) -> None:
    name = stacks.make(stubborn("5s"))
    env = {"COMPOSE_AGENT_URL": gateway.mcp_url, "STATUS_PANEL_USERNAME": "alice", "STATUS_PANEL_PASSWORD": "pw-alice"}
    panel = start_panel(tmp_path, env=env, token=gateway.panel_token, name="people")
    try:
        await up(panel, name)
        async with httpx2.AsyncClient(base_url=panel.base, timeout=120) as browser:
            csrf = await log_in(browser, "alice", "pw-alice")
            started = await browser.post(f"/api/v1/stacks/{name}/down", headers={"X-CSRF-Token": csrf, **ASYNC})
            assert started.status_code == 202, started.text
            task = started.json()
            assert task["status"] == "working" and started.headers["location"] == f"/api/v1/tasks/{task['task']}"

            async def progress() -> dict[str, Any] | None:
                seen = (await browser.get(f"/api/v1/tasks/{task['task']}")).json()
                return seen if seen["status"] == "working" and seen["message"] and name in seen["message"] else None

            await eventually(progress, what="the task's progress through the panel")
            async with api(panel) as script:  # the panel's token with no person: not alice's task
                assert (await script.get(f"/api/v1/tasks/{task['task']}")).status_code == 404

            async def ended() -> dict[str, Any] | None:
                seen = (await browser.get(f"/api/v1/tasks/{task['task']}")).json()
                return seen if seen["status"] != "working" else None

            done = await eventually(ended, what="the task to end")
            assert done is not None and done["status"] == "completed"
            assert done["result"]["ok"] is True and done["result"]["action"] == "down"
            # Without the header the same route waits and answers with the result, as it always did.
            plain = await browser.post(f"/api/v1/stacks/{name}/up", headers={"X-CSRF-Token": csrf})
            assert plain.status_code == 200 and plain.json()["action"] == "up"
    finally:
        panel.stop()
    audit = Path(gateway.env["COMPOSE_AGENT_STATE_DIR"]) / "audit.log"
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    [intent] = [line for line in lines if line["phase"] == "intent" and line["tool"] == "down"]
    assert intent["task"] == task["task"] and intent["on_behalf_of"] == "alice"
    assert intent["caller"] == "status_panel_token" and intent["idempotency_key"]


async def test_the_panel_stops_a_task_and_says_the_stack_is_left_as_compose_left_it(
    stacks: StackFactory, gateway: Gateway, panel: Panel
) -> None:
    name = stacks.make(stubborn("120s"))
    await up(panel, name)
    async with api(panel) as client:
        started = await client.post(f"/api/v1/stacks/{name}/down", headers=ASYNC)
        assert started.status_code == 202, started.text
        task_id = started.json()["task"]

        async def stopping() -> bool:
            seen = (await client.get(f"/api/v1/tasks/{task_id}")).json()
            return bool(compose_down_pids(name)) and "Stopping" in (seen["message"] or "")

        await eventually(stopping, what="docker compose down to wait for the container to stop")

        stopped = await client.post(f"/api/v1/tasks/{task_id}/cancel")
        assert stopped.status_code == 200, stopped.text
        body = stopped.json()
        assert body["status"] == "cancelled" and body["error_status"] == 502
        assert "left as Compose left it" in body["error"] and "stubborn " in body["error"]
        assert compose_down_pids(name) == []
        for bad in ("../../etc", "x" * 65):
            assert (await client.get(f"/api/v1/tasks/{bad}")).status_code == 404
        capabilities = (await client.get("/capabilities")).json()
        assert "tasks" in capabilities["features"]
