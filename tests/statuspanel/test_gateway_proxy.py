"""The panel's API through a real ``compose-agent serve`` and a real engine, the panel itself a real process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory
from tests.polling import eventually
from tests.statuspanel.conftest import Gateway, Panel, start_panel

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


def api(panel: Panel, token: str | None = "default") -> httpx2.AsyncClient:
    headers = {}
    bearer = panel.token if token == "default" else token
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    return httpx2.AsyncClient(base_url=panel.base, headers=headers, timeout=120)


async def until(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy."""
    return await eventually(check, timeout=timeout, interval=0.1, what=what)


async def log_in(browser: httpx2.AsyncClient, username: str, password: str) -> str:
    """Log in through the form, as a browser does; returns the session's CSRF token for POSTs."""
    form = re.search(r'name="csrf" value="([^"]+)"', (await browser.get("/login")).text)
    assert form
    fields = {"csrf": form.group(1), "username": username, "password": password}
    assert (await browser.post("/login", data=fields)).status_code == 303
    page = re.search(r'<meta name="csrf-token" content="([^"]+)"', (await browser.get("/")).text)
    assert page
    return page.group(1)


def states(ps: dict[str, Any]) -> dict[str, str]:
    return {s["service"]: s["state"] for s in ps["services"]}


async def test_actions_logs_and_metrics_go_through_the_gateway(
    stacks: StackFactory, gateway: Gateway, panel: Panel
) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    async with api(panel) as client:
        listing = (await client.get("/api/v1/stacks")).json()
        assert name in {s["name"] for s in listing["stacks"]}

        up = await client.post(f"/api/v1/stacks/{name}/up")
        assert up.status_code == 200, up.text
        assert up.json()["ok"] is True
        ps = (await client.get(f"/api/v1/stacks/{name}")).json()
        assert set(ps) == {"project", "host", "services", "policy", "nodes"} and ps["policy"]["allowed"] is True
        assert states(ps) == {"web": "running", "worker": "running"}

        stop = await client.post(f"/api/v1/stacks/{name}/stop", json={"services": ["worker"]})
        assert stop.status_code == 200, stop.text
        assert states((await client.get(f"/api/v1/stacks/{name}")).json()) == {"web": "running", "worker": "exited"}
        assert (await client.post(f"/api/v1/stacks/{name}/start", json={"services": ["worker"]})).status_code == 200
        assert (await client.post(f"/api/v1/stacks/{name}/restart")).status_code == 200

        async def ticks() -> dict[str, Any] | None:
            response = await client.get(f"/api/v1/stacks/{name}/logs", params={"services": "worker", "tail": "5"})
            body = response.json()
            return body if response.status_code == 200 and body["lines"] >= 2 else None

        logs = await until(ticks, 20, "worker log lines")
        # One `since` grammar end to end: Unix seconds from the epoch on, as the gateway reads them.
        epoch = await client.get(f"/api/v1/stacks/{name}/logs", params={"services": "worker", "since": "0"})
        assert epoch.status_code == 200, epoch.text
        assert epoch.json()["lines"] >= 2
        ahead = str(int(time.time()) + 3600)
        future = await client.get(f"/api/v1/stacks/{name}/logs", params={"services": "worker", "since": ahead})
        assert future.status_code == 200, future.text
        assert future.json()["lines"] == 0
        assert all(line.startswith("worker") for line in logs["text"].splitlines())
        grepped = (
            await client.get(f"/api/v1/stacks/{name}/logs", params={"grep": "tick [0-9]+$", "tail": "50"})
        ).json()
        assert grepped["lines"] >= 1
        assert all("tick" in line for line in grepped["text"].splitlines())

        down = await client.post(f"/api/v1/stacks/{name}/down", json={"volumes": True})
        assert down.status_code == 200, down.text
        assert set(states((await client.get(f"/api/v1/stacks/{name}")).json()).values()) == {"missing"}

        metrics = (await client.get("/api/v1/metrics")).json()
    # Every execution ran in the gateway: the panel has none of its own in normal mode.
    assert metrics["status_panel_count"] == 0
    assert metrics["compose_agent_count"] >= 10
    assert metrics["total_count"] == metrics["compose_agent_count"]
    assert metrics["last_control_plane"] == "compose_agent"
    assert metrics["last_command_timestamp_ms"] > (time.time() - 300) * 1000
    assert metrics["success_count"] >= 10
    gateway_own = httpx2.get(gateway.base + "/api/v1/metrics").json()
    assert gateway_own["compose_agent_count"] == metrics["compose_agent_count"]


async def test_a_50_mb_action_body_gets_413_and_the_gateway_runs_nothing(
    stacks: StackFactory, gateway: Gateway, panel: Panel
) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    async with api(panel) as client:
        huge = b'{"services": ["web"]' + b" " * (50 * 1024 * 1024) + b"}"
        response = await client.post(f"/api/v1/stacks/{name}/up", content=huge)
        assert response.status_code == 413, response.text
        metrics = (await client.get("/api/v1/metrics")).json()
        assert metrics["compose_agent_reachable"] is True
        assert metrics["total_count"] == 0, metrics
        ps = (await client.get(f"/api/v1/stacks/{name}")).json()
    assert set(states(ps).values()) == {"missing"}, ps


async def test_the_gateway_audits_each_action_with_the_person_logged_in_to_the_panel(
    stacks: StackFactory, gateway: Gateway, tmp_path: Path
) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    env = {"COMPOSE_AGENT_URL": gateway.mcp_url, "STATUS_PANEL_USERNAME": "alice", "STATUS_PANEL_PASSWORD": "pw-alice"}
    panel = start_panel(tmp_path, env=env, token=gateway.panel_token, name="people")
    try:
        async with httpx2.AsyncClient(base_url=panel.base, timeout=120) as browser:
            csrf = await log_in(browser, "alice", "pw-alice")
            stop = await browser.post(f"/api/v1/stacks/{name}/stop", headers={"X-CSRF-Token": csrf})
            assert stop.status_code == 200, stop.text
        async with api(panel) as script:
            assert (await script.post(f"/api/v1/stacks/{name}/stop")).status_code == 200
    finally:
        panel.stop()
    audit = Path(gateway.env["COMPOSE_AGENT_STATE_DIR"]) / "audit.log"
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    stops = [line for line in lines if line["tool"] == "stop" and line["arguments"]["project"] == name]
    assert [(line["phase"], line.get("on_behalf_of")) for line in stops] == [
        ("intent", "alice"),
        ("outcome", "alice"),
        ("intent", None),
        ("outcome", None),
    ]
    assert {line["caller"] for line in stops} == {"status_panel_token"}


async def test_gateway_errors_map_to_http_statuses(stacks: StackFactory, gateway: Gateway, panel: Panel) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    broken = stacks.make(
        "services:\n  app:\n    image: compose-agent-test-missing-image:never\n    pull_policy: never\n"
    )
    async with api(panel) as client:
        missing = await client.get("/api/v1/stacks/no-such-stack")
        assert missing.status_code == 404
        assert "known stacks: " in missing.json()["error"] and name in missing.json()["error"]

        await client.post(f"/api/v1/stacks/{name}/up")
        unknown_service = await client.get(f"/api/v1/stacks/{name}/logs", params={"services": "nosuch"})
        assert unknown_service.status_code == 400
        assert "nosuch" in unknown_service.json()["error"]

        failed = await client.post(f"/api/v1/stacks/{broken}/up")
        assert failed.status_code == 502
        assert "docker compose up" in failed.json()["error"]

        bad_name = await client.post("/api/v1/stacks/Bad.Name/up")
        assert bad_name.status_code == 400


async def test_auth_failures_are_401_and_the_agent_token_is_not_the_panel_token(gateway: Gateway, panel: Panel) -> None:
    async with api(panel, token=None) as anonymous:
        assert (await anonymous.get("/api/v1/stacks")).status_code == 401
        assert (await anonymous.post("/api/v1/stacks/x/up")).status_code == 401
        assert (await anonymous.get("/health")).status_code == 200
        assert (await anonymous.get("/capabilities")).status_code == 200
        assert (await anonymous.get("/api/v1/metrics")).status_code == 200
    async with api(panel, token="not-the-token") as wrong:
        assert (await wrong.get("/api/v1/stacks")).status_code == 401
    async with api(panel, token=gateway.agent_token) as agent:
        assert (await agent.get("/api/v1/stacks")).status_code == 401


async def test_a_panel_with_a_token_the_gateway_rejects_answers_503(gateway: Gateway, tmp_path: Path) -> None:
    panel = start_panel(tmp_path, env={"COMPOSE_AGENT_URL": gateway.mcp_url}, token="rejected-token", name="wrong")
    try:
        async with api(panel) as client:
            # A rejected token is answered at once, not after the panel's retries run out.
            with anyio.fail_after(5):
                response = await client.get("/api/v1/stacks")
            assert response.status_code == 503
            assert response.json()["error"] == "compose-agent unavailable"
    finally:
        panel.stop()


async def test_killed_gateway_gives_503_quickly_and_the_panel_recovers_on_its_own(
    stacks: StackFactory, gateway: Gateway, panel: Panel
) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    async with api(panel) as client:
        assert (await client.get(f"/api/v1/stacks/{name}")).status_code == 200
        gateway.kill()

        with anyio.fail_after(5):
            response = await client.get(f"/api/v1/stacks/{name}")
        assert response.status_code == 503
        body = response.json()
        assert body["error"] == "compose-agent unavailable"
        assert gateway.mcp_url in body["detail"]
        action = await client.post(f"/api/v1/stacks/{name}/restart")
        assert action.status_code == 503
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json()["compose_agent"] == "down"

        gateway.start()  # same port, same tokens; the panel is not restarted
        gateway.wait_healthy()

        async def recovered() -> bool:
            return (await client.get(f"/api/v1/stacks/{name}")).status_code == 200

        await until(recovered, 15, "the panel answering again")
        assert (await client.get("/health")).json()["compose_agent"] == "up"
        assert panel.process is not None and panel.process.poll() is None


async def test_normal_mode_needs_no_docker_socket(stacks: StackFactory, gateway: Gateway, tmp_path: Path) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    panel = start_panel(
        tmp_path,
        env={"COMPOSE_AGENT_URL": gateway.mcp_url, "DOCKER_HOST": f"unix://{tmp_path}/no-such-docker.sock"},
        token=gateway.panel_token,
        name="nodocker",
    )
    try:
        async with api(panel) as client:
            assert (await client.post(f"/api/v1/stacks/{name}/up")).status_code == 200
            assert states((await client.get(f"/api/v1/stacks/{name}")).json())["web"] == "running"
    finally:
        panel.stop()


LEGACY_LINE = "compose_agent=false - running in legacy mode"


async def test_legacy_mode_runs_in_process_and_counts_status_panel(stacks: StackFactory, tmp_path: Path) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    panel = start_panel(
        tmp_path,
        env={
            "COMPOSE_AGENT_ENABLED": "false",
            "STACKS_DIR": str(stacks.root),
            "STATUS_PANEL_USERNAME": "alice",
            "STATUS_PANEL_PASSWORD": "pw-alice",
        },
        token="legacy-token",
        name="legacy",
    )
    try:
        warnings = [line for line in panel.output().splitlines() if LEGACY_LINE in line]
        assert len(warnings) == 1
        assert " WARNING " in warnings[0] and warnings[0].endswith(LEGACY_LINE)
        async with api(panel) as client:
            caps = (await client.get("/capabilities")).json()
            assert caps["compose_agent"] is False
            assert caps["legacy_mode"] is True
            assert caps["control_plane"] == "status_panel"
            assert (await client.get("/health")).json()["compose_agent"] == "disabled"

            assert (await client.post(f"/api/v1/stacks/{name}/up")).status_code == 200
            assert states((await client.get(f"/api/v1/stacks/{name}")).json())["worker"] == "running"
            assert (await client.get("/api/v1/stacks/nope")).status_code == 404
            # logs and rollback reach the in-process operations too; this stack was never deployed.
            logs = await client.get(f"/api/v1/stacks/{name}/logs?services=web&tail=5")
            assert logs.status_code == 200, logs.text
            assert logs.json()["project"] == name and logs.json()["lines"] <= 5
            rollback = await client.post(f"/api/v1/stacks/{name}/rollback", json={"version": 7})
            assert rollback.status_code == 400 and "has no kept versions" in rollback.json()["error"], rollback.text
            metrics = (await client.get("/api/v1/metrics")).json()
        assert metrics["status_panel_count"] >= 2
        assert metrics["compose_agent_count"] == 0
        assert metrics["last_control_plane"] == "status_panel"
        async with httpx2.AsyncClient(base_url=panel.base, timeout=120) as browser:
            csrf = await log_in(browser, "alice", "pw-alice")
            stop = await browser.post(
                f"/api/v1/stacks/{name}/stop", json={"services": ["worker"]}, headers={"X-CSRF-Token": csrf}
            )
            assert stop.status_code == 200, stop.text
        audit = [json.loads(line) for line in (tmp_path / "legacy-state" / "audit.log").read_text().splitlines()]
        assert any(line["control_plane"] == "status_panel" for line in audit)
        stops = [line for line in audit if line["tool"] == "stop"]
        assert [(line["phase"], line.get("on_behalf_of")) for line in stops] == [
            ("intent", "alice"),
            ("outcome", "alice"),
        ]
        async with api(panel) as client:
            assert (await client.post(f"/api/v1/stacks/{name}/down", json={"volumes": True})).status_code == 200
            assert set(states((await client.get(f"/api/v1/stacks/{name}")).json()).values()) == {"missing"}
    finally:
        panel.stop()


async def test_legacy_mode_from_config_json(stacks: StackFactory, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"compose_agent_enabled": False}))
    panel = start_panel(
        tmp_path, env={"CONFIG_PATH": str(config), "STACKS_DIR": str(stacks.root)}, token="t", name="legacy-file"
    )
    try:
        assert LEGACY_LINE in panel.output()
        caps = httpx2.get(panel.base + "/capabilities").json()
        assert caps["legacy_mode"] is True and caps["compose_agent"] is False
    finally:
        panel.stop()


def test_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "statuspanel", "serve", "--host", "0.0.0.0", "--port", "1"],
        env={"PATH": "/usr/bin:/bin", "CONFIG_PATH": str(tmp_path / "none.json"), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without STATUS_PANEL_TOKEN" in result.stderr
