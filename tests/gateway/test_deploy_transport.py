"""deploy, plan, rollback and versions through a real `compose-agent serve`, with real clients."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import docker
import httpx2
import pytest
from mcp import Client, ClientSession
from mcp.client.context import ClientRequestContext
from mcp.client.streamable_http import streamable_http_client
from mcp.types import ElicitRequestParams, ElicitResult

from gateway.errors import ERROR_META_KEY
from tests.conftest import StackFactory, random_name
from tests.gateway.conftest import GatewayProcess, inspector_path, start_gateway, stop_process
from tests.gateway.test_deploy import container_ids, two

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_the_agent_token_may_deploy_and_roll_back_and_the_panel_token_may_only_plan(
    gateway: GatewayProcess, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    project = random_name("d")
    stacks.track(project)
    yaml = two(stacks)
    async with httpx2.AsyncClient(headers=gateway.headers(gateway.panel_token)) as http:
        async with streamable_http_client(gateway.url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as panel:
                await panel.initialize()
                refused = await panel.call_tool("deploy", {"project": project, "compose_yaml": yaml})
                planned = await panel.call_tool("plan", {"project": project, "compose_yaml": yaml})
    assert refused.is_error and "may not call 'deploy'" in refused.content[0].text  # type: ignore[union-attr]
    assert not (stacks.root / project).exists()
    assert planned.structured_content is not None
    assert [a["action"] for a in planned.structured_content["actions"]] == ["create", "create"]

    async with httpx2.AsyncClient(headers=gateway.headers(), timeout=60) as http:
        async with streamable_http_client(gateway.url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as agent:
                await agent.initialize()
                first = await agent.call_tool("deploy", {"project": project, "compose_yaml": yaml})
                await agent.call_tool("deploy", {"project": project, "compose_yaml": two(stacks, 3602)})
                back = await agent.call_tool("rollback", {"project": project})
    assert first.structured_content is not None and first.structured_content["version"] == 1
    assert back.structured_content is not None and back.structured_content["version"] == 1
    assert set(container_ids(docker_client, project)) == {"web", "worker"}
    audit = [json.loads(line) for line in gateway.audit.read_text().splitlines()]
    assert [(r["caller"], r["tool"], r["outcome"]) for r in audit if r["phase"] == "outcome"] == [
        ("status_panel_token", "deploy", "refused"),
        ("compose_agent_token", "deploy", "ok"),
        ("compose_agent_token", "deploy", "ok"),
        ("compose_agent_token", "rollback", "ok"),
    ]


def inspector_call(gateway: GatewayProcess, tmp_path: Path, tool: str, **args: Any) -> dict[str, Any]:
    """One tools/call through the Inspector CLI; an error *result* is an answer too, a protocol error is not."""
    argv = [inspector_path(), "--cli", gateway.url, "--transport", "http"]
    argv += ["--header", f"Authorization: Bearer {gateway.agent_token}", "--method", "tools/call", "--tool-name", tool]
    for key, value in args.items():
        argv += ["--tool-arg", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    env = {**os.environ, "MCP_CATALOG_PATH": str(tmp_path / "inspector-catalog.json")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    # Exit 5 is the CLI saying "the tool returned isError"; it still prints the result.
    assert done.returncode == 0 or "tool_is_error" in done.stderr, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_inspector_reads_deploy_plan_and_their_failures(
    gateway: GatewayProcess, stacks: StackFactory, tmp_path: Path
) -> None:
    project = random_name("d")
    stacks.track(project)

    broken = inspector_call(gateway, tmp_path, "deploy", project=project, compose_yaml="services: [web, {")
    deployed = inspector_call(gateway, tmp_path, "deploy", project=project, compose_yaml=two(stacks), wait=True)
    plan = inspector_call(gateway, tmp_path, "plan", project=project, compose_yaml=two(stacks, 3602))
    versions = inspector_call(gateway, tmp_path, "versions", project=project)

    # The TypeScript client checks structured content against the output schema: these passed it.
    assert broken["isError"] is True and "structuredContent" not in broken
    assert "Compose rejects this compose file" in broken["content"][0]["text"]
    assert deployed["structuredContent"]["version"] == 1
    assert {a["service"]: a["action"] for a in plan["structuredContent"]["actions"]} == {
        "web": "unchanged",
        "worker": "recreate",
    }
    assert versions["structuredContent"]["current"] == 1


async def test_policy_confirm_in_config_json_guards_down_over_http_with_a_token_or_the_persons_answer(
    tmp_path: Path, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"policy": {"confirm": ["down", "deploy"]}}))
    proc = start_gateway(tmp_path, stacks.root, env={"CONFIG_PATH": str(config)})
    project = random_name("d")
    stacks.track(project)
    asked: list[str] = []

    async def person(ctx: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"approve": True})

    try:
        async with httpx2.AsyncClient(headers=proc.headers(), timeout=60) as http:
            transport = streamable_http_client(proc.url, http_client=http)
            # This client declares elicitation: the person is asked, and the deploy goes ahead.
            async with Client(transport, elicitation_callback=person) as client:  # type: ignore[arg-type]
                deployed = await client.call_tool("deploy", {"project": project, "compose_yaml": two(stacks)})
            assert not deployed.is_error, deployed.content
            async with streamable_http_client(proc.url, http_client=http) as (read, write, *_):
                async with ClientSession(read, write) as session:  # no elicitation: the token path
                    await session.initialize()
                    first = await session.call_tool("down", {"project": project})
                    assert set(container_ids(docker_client, project)) == {"web", "worker"}
                    token = re.search(r'confirm="([^"]+)"', first.content[0].text)  # type: ignore[union-attr]
                    assert token is not None
                    done = await session.call_tool("down", {"project": project, "confirm": token.group(1)})
    finally:
        stop_process(proc.process)
    assert len(asked) == 1 and "web: create" in asked[0]
    assert first.is_error and (first.meta or {}).get(ERROR_META_KEY) == "confirmation_required"
    assert not done.is_error and container_ids(docker_client, project) == {}
    audit = [json.loads(line) for line in proc.audit.read_text().splitlines()]
    outcomes = [(r["tool"], r["outcome"]) for r in audit if r["phase"] == "outcome"]
    assert outcomes == [("deploy", "ok"), ("down", "refused"), ("down", "ok")]
    assert token.group(1) not in proc.audit.read_text()


async def test_the_operator_can_grant_the_panel_token_rollback_alone(
    tmp_path: Path, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"status_panel_tools": ["rollback"]}))
    proc = start_gateway(tmp_path, stacks.root, env={"CONFIG_PATH": str(config)})
    project = random_name("d")
    stacks.track(project)
    try:
        async with httpx2.AsyncClient(headers=proc.headers(), timeout=60) as http:
            async with streamable_http_client(proc.url, http_client=http) as (read, write, *_):
                async with ClientSession(read, write) as agent:
                    await agent.initialize()
                    for sleep in (3601, 3602):
                        done = await agent.call_tool("deploy", {"project": project, "compose_yaml": two(stacks, sleep)})
                        assert not done.is_error, done.content
        async with httpx2.AsyncClient(headers=proc.headers(proc.panel_token), timeout=60) as http:
            async with streamable_http_client(proc.url, http_client=http) as (read, write, *_):
                async with ClientSession(read, write) as panel:
                    await panel.initialize()
                    deploy = await panel.call_tool("deploy", {"project": project, "compose_yaml": two(stacks)})
                    back = await panel.call_tool("rollback", {"project": project})
                    config_call = await panel.call_tool("config", {"project": project})
    finally:
        stop_process(proc.process)
    assert deploy.is_error and "may not call 'deploy'" in deploy.content[0].text  # type: ignore[union-attr]
    assert config_call.is_error  # the grant adds rollback, nothing else
    assert not back.is_error and back.structured_content is not None and back.structured_content["version"] == 1
    assert (stacks.root / project / "compose.yaml").read_text() == two(stacks)
