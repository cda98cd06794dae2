"""The three-container deployment, end to end, on the real engine.

The images are built from this tree, ``docker-compose.yml`` is brought up under a throwaway project
name (see conftest.py), and everything a user would do is done from outside the containers: an MCP
client over Streamable HTTP with a bearer token, the panel's JSON API, ``docker stop``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import docker
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.polling import eventually as _eventually

from .conftest import DOCKER_SOCKET, Deployment, WebStack

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.docker]

POLL_S = 0.25


@asynccontextmanager
async def mcp_client(dep: Deployment, token: str | None = None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token or dep.compose_agent_token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(90.0)) as http:
        async with Client(streamable_http_client(f"{dep.gateway_url}/mcp", http_client=http)) as client:
            yield client


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(tool, arguments)
    text = " ".join(getattr(block, "text", "") for block in result.content)
    assert not result.is_error, f"{tool}({arguments}) failed: {text}"
    return result.structured_content


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    await _eventually(check, timeout=timeout, interval=POLL_S, what=what)


async def get_text(url: str) -> str | None:
    try:
        async with httpx2.AsyncClient(timeout=5.0) as http:
            response = await http.get(url)
    except httpx2.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def inspect(name: str) -> dict[str, Any]:
    client = docker.from_env()
    try:
        return dict(client.api.inspect_container(name))
    finally:
        client.close()


def mounts_socket(name: str) -> bool:
    return any(m.get("Destination") == DOCKER_SOCKET for m in inspect(name)["Mounts"])


async def test_the_deployment_runs_three_healthy_unprivileged_containers_with_the_socket_only_where_allowed(
    deployment: Deployment,
) -> None:
    for service, name in deployment.containers.items():
        info = inspect(name)
        assert info["State"]["Health"]["Status"] == "healthy", service
        assert info["Config"]["User"] not in ("", "root", "0"), f"{service} runs as root"
        assert info["HostConfig"]["RestartPolicy"]["Name"] == ("no" if service == "compose-agent" else "unless-stopped")
    assert not mounts_socket(deployment.containers["statuspanel"])
    assert mounts_socket(deployment.containers["compose-agent"])
    assert mounts_socket(deployment.containers["watchdog"])
    # The gateway is reachable from this host's loopback only.
    bindings = inspect(deployment.containers["compose-agent"])["HostConfig"]["PortBindings"]["8765/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    # The stacks folder is at the same absolute path inside as outside.
    stacks = [m for m in inspect(deployment.containers["compose-agent"])["Mounts"] if m["Type"] == "bind"]
    assert any(m["Source"] == m["Destination"] == str(deployment.stacks_dir) for m in stacks)


async def test_the_gateway_wants_a_token_and_a_known_host_name(deployment: Deployment) -> None:
    async with httpx2.AsyncClient(timeout=10.0) as http:
        assert (await http.get(f"{deployment.gateway_url}/health")).status_code == 200
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        accept = {"Accept": "application/json, text/event-stream"}
        no_token = await http.post(f"{deployment.gateway_url}/mcp", json=ping, headers=accept)
        assert no_token.status_code == 401
        rebinding = await http.post(
            f"{deployment.gateway_url}/mcp",
            json=ping,
            headers={**accept, "Host": "evil.example", "Authorization": f"Bearer {deployment.compose_agent_token}"},
        )
        assert rebinding.status_code == 421


async def test_an_mcp_client_runs_a_stack_with_a_relative_bind_mount_through_the_containerised_gateway(
    deployment: Deployment, web_stack: WebStack
) -> None:
    page_url = f"http://127.0.0.1:{web_stack.port}/"

    async def serves_the_page() -> bool:
        return await get_text(page_url) == web_stack.page

    async with mcp_client(deployment) as client:
        listed = await call(client, "list_stacks")
        assert web_stack.name in [s["name"] for s in listed["stacks"]]

        await call(client, "up", project=web_stack.name, wait=True)
        ps = await call(client, "ps", project=web_stack.name)
        assert ps["project"] == web_stack.name
        states = {s["service"]: s for s in ps["services"]}
        assert set(states) == {"web", "worker"}
        assert all(s["state"] == "running" for s in states.values()), states
        assert states["web"]["health"] == "healthy"
        assert any(str(web_stack.port) in port for port in states["web"]["ports"]), states["web"]["ports"]
        # The engine on the host resolved ./site: the gateway handed it the host's own path.
        await eventually(serves_the_page, 20, f"the bind-mounted page on {page_url}")

        logs = await call(client, "logs", project=web_stack.name, services=["worker"], tail=20, grep="tick")
        assert "tick" in logs["text"]

        before = {s["service"]: s["started_at"] for s in ps["services"]}
        await call(client, "restart", project=web_stack.name, services=["web"])
        after = {s["service"]: s["started_at"] for s in (await call(client, "ps", project=web_stack.name))["services"]}
        assert after["web"] != before["web"]
        assert after["worker"] == before["worker"]
        await eventually(serves_the_page, 20, "the page again after restart")

        await call(client, "down", project=web_stack.name)
        ps = await call(client, "ps", project=web_stack.name)
        assert all(s["state"] == "missing" for s in ps["services"]), ps
        assert await get_text(page_url) is None


async def test_the_panel_lists_the_stack_and_proxies_an_action_to_the_gateway(
    deployment: Deployment, web_stack: WebStack
) -> None:
    async with mcp_client(deployment) as client:
        await call(client, "up", project=web_stack.name, wait=True)
        ps = await call(client, "ps", project=web_stack.name)
    started = {s["service"]: s["started_at"] for s in ps["services"]}

    auth = {"Authorization": f"Bearer {deployment.status_panel_token}"}
    async with httpx2.AsyncClient(base_url=deployment.panel_url, headers=auth, timeout=90.0) as panel:
        assert (await panel.get("/api/v1/stacks", headers={"Authorization": "Bearer wrong"})).status_code == 401
        listed = await panel.get("/api/v1/stacks")
        assert listed.status_code == 200, listed.text
        assert web_stack.name in [s["name"] for s in listed.json()["stacks"]]
        capabilities = (await panel.get("/capabilities")).json()
        assert capabilities["legacy_mode"] is False

        restarted = await panel.post(f"/api/v1/stacks/{web_stack.name}/restart", json={"services": ["web"]})
        assert restarted.status_code == 200, restarted.text
        assert restarted.json()["ok"] is True
        ps = (await panel.get(f"/api/v1/stacks/{web_stack.name}")).json()
    assert {s["service"]: s["started_at"] for s in ps["services"]}["web"] != started["web"]

    async with httpx2.AsyncClient(timeout=10.0) as http:
        metrics = (await http.get(f"{deployment.gateway_url}/api/v1/metrics")).json()
    # The panel's action ran in the gateway, not in the panel.
    assert metrics["compose_agent_count"] >= 1
    assert metrics["last_control_plane"] == "compose_agent"


async def test_a_stopped_gateway_is_brought_back_by_the_watchdog(deployment: Deployment) -> None:
    gateway = deployment.containers["compose-agent"]
    first_start = inspect(gateway)["State"]["StartedAt"]
    client = docker.from_env()
    try:
        client.containers.get(gateway).stop(timeout=5)
    finally:
        client.close()
    assert inspect(gateway)["State"]["Running"] is False

    async def gateway_is_back() -> bool:
        state = inspect(gateway)["State"]
        return bool(state["Running"]) and await get_text(f"{deployment.gateway_url}/health") is not None

    # initial delay 2 s, checks every 1 s (conftest), plus the gateway's own start-up.
    await eventually(gateway_is_back, 45, "the watchdog restarting the stopped compose-agent")
    state = inspect(gateway)
    assert state["State"]["StartedAt"] != first_start
    # The engine's restart policy is "no": the watchdog, not the engine, brought it back.
    assert state["RestartCount"] == 0

    # The watchdog says what it did; its status port is only reachable inside the project network.
    status = json.loads(
        docker_exec(
            deployment.containers["watchdog"],
            "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8766/status', timeout=5).read().decode())",
        )
    )
    assert status["target"] == gateway
    # Not status["restart_attempts"]: that counter resets once the gateway has been healthy for the
    # stable period (10 checks of 1 s here), which a loaded machine can pass before this line runs.
    assert f"event=restart target={gateway} attempt=1 " in deployment.logs("watchdog")

    async with mcp_client(deployment) as mcp:
        await call(mcp, "list_stacks")
    auth = {"Authorization": f"Bearer {deployment.status_panel_token}"}

    async def panel_serves_stacks() -> bool:
        async with httpx2.AsyncClient(headers=auth, timeout=10.0) as http:
            return (await http.get(f"{deployment.panel_url}/api/v1/stacks")).status_code == 200

    await eventually(panel_serves_stacks, 20, "the panel reaching the restarted gateway")


def docker_exec(container: str, python_code: str) -> str:
    client = docker.from_env()
    try:
        code, output = client.containers.get(container).exec_run(["python", "-c", python_code])
    finally:
        client.close()
    text = str(output.decode(errors="replace"))
    assert code == 0, text
    return text


async def test_the_watchdog_container_holds_the_watchdog_without_the_gateway_or_its_dependencies(
    deployment: Deployment,
) -> None:
    candidates = ("watchdog", "docker", "uvicorn", "gateway", "statuspanel", "mcp", "hvac", "jinja2", "regex")
    found = docker_exec(
        deployment.containers["watchdog"],
        f"import importlib.util as u; print(*[m for m in {candidates!r} if u.find_spec(m)])",
    )
    assert found.split() == ["watchdog", "docker", "uvicorn"]


async def test_in_legacy_mode_the_panel_runs_actions_itself_with_the_socket(
    legacy_deployment: Deployment, web_stack: WebStack
) -> None:
    dep = legacy_deployment
    panel_container = dep.containers["statuspanel"]
    assert mounts_socket(panel_container)
    running = {c["Names"][0].lstrip("/") for c in _project_containers(dep.project)}
    assert running == {panel_container}, "the gateway and watchdog stay out in legacy mode"
    assert "compose_agent=false - running in legacy mode" in dep.logs("statuspanel")

    auth = {"Authorization": f"Bearer {dep.status_panel_token}"}
    async with httpx2.AsyncClient(base_url=dep.panel_url, headers=auth, timeout=90.0) as panel:
        capabilities = (await panel.get("/capabilities")).json()
        assert capabilities["legacy_mode"] is True
        assert capabilities["control_plane"] == "status_panel"

        up = await panel.post(f"/api/v1/stacks/{web_stack.name}/up")
        assert up.status_code == 200, up.text
        ps = (await panel.get(f"/api/v1/stacks/{web_stack.name}")).json()
        assert {s["service"]: s["state"] for s in ps["services"]} == {"web": "running", "worker": "running"}

        metrics = (await panel.get("/api/v1/metrics")).json()
    assert metrics["status_panel_count"] >= 1
    assert metrics["compose_agent_count"] == 0
    assert metrics["last_control_plane"] == "status_panel"

    async def serves_the_page() -> bool:
        return await get_text(f"http://127.0.0.1:{web_stack.port}/") == web_stack.page

    await eventually(serves_the_page, 20, "the bind-mounted page of a stack the legacy panel started")


def _project_containers(project: str) -> list[dict[str, Any]]:
    client = docker.from_env()
    try:
        return list(client.api.containers(all=True, filters={"label": f"com.docker.compose.project={project}"}))
    finally:
        client.close()


async def test_without_configured_tokens_the_gateway_generates_them_and_the_panel_presents_its_own(
    tokenless_deployment: Deployment,
) -> None:
    dep = tokenless_deployment
    tokens = json.loads(
        docker_exec(dep.containers["compose-agent"], "print(open('/var/lib/compose-agent/tokens.json').read())")
    )
    # The panel's container can read its own token, and not the gateway's full-scope one.
    seen_by_panel = docker_exec(
        dep.containers["statuspanel"],
        "import glob, json; print(json.dumps({p: open(p).read() for p in glob.glob('/var/lib/compose-agent*/**', "
        "recursive=True) if p.endswith('.json')}))",
    )
    assert tokens["status_panel_token"] in seen_by_panel
    assert tokens["compose_agent_token"] not in seen_by_panel
    async with mcp_client(dep, tokens["compose_agent_token"]) as client:
        listed = await call(client, "list_stacks")
    assert dep.project in {s["name"] for s in listed["stacks"]}
    async with httpx2.AsyncClient(base_url=dep.panel_url, timeout=10) as http:
        bearer = {"Authorization": f"Bearer {tokens['status_panel_token']}"}

        async def panel_reaches_gateway() -> bool:
            return (await http.get("/api/v1/stacks", headers=bearer)).status_code == 200

        await eventually(panel_reaches_gateway, 30, "the panel serving stacks with the generated token")
        assert (await http.get("/api/v1/stacks")).status_code == 401
    for secret in tokens.values():
        assert secret not in dep.logs("statuspanel") and secret not in dep.logs("compose-agent")
