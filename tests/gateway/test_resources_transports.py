"""The whole non-tool surface through a real ``compose-agent serve``, over stdio and Streamable HTTP.

One walk per transport: the compose file is listed and readable, a path-like URI reads nothing,
the templates are listed, ``diagnose_stack`` shows the live state of a running stack, stack names
complete, and ``ps`` links the MCP App. Then the panel's token: it reads what it may call, and
nothing more.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import PromptReference, ResourceTemplateReference

from gateway.mcp.approvals import APPROVAL_TEMPLATE
from gateway.mcp.dashboard import APP_MIME_TYPE, APP_URI
from gateway.mcp.resources import COMPOSE_FILE_TEMPLATE, LOGS_TEMPLATE, STATUS_TEMPLATE
from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory
from tests.gateway.conftest import GatewayProcess

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


@asynccontextmanager
async def http_client(gateway: GatewayProcess, token: str | None = None) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers=gateway.headers(token), timeout=120) as http:
        async with Client(streamable_http_client(gateway.url, http_client=http)) as client:
            yield client


@asynccontextmanager
async def stdio_client(stacks: StackFactory, tmp_path: Path) -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "gateway", "serve", "--transport", "stdio", "--stacks-dir", str(stacks.root)],
        env={**os.environ, "COMPOSE_AGENT_STATE_DIR": str(tmp_path / "state")},
    )
    async with Client(params, read_timeout_seconds=120) as client:
        yield client


async def walk(client: Client, stacks: StackFactory, project: str) -> None:
    """Everything the issue's "done when" names, through one connected client."""
    up = await client.call_tool("up", {"project": project, "wait": True})
    assert not up.is_error, up.content

    listed = {str(r.uri): r for r in (await client.list_resources()).resources}
    assert listed[f"compose://stacks/{project}/compose.yaml"].mime_type == "application/yaml"
    assert listed[APP_URI].mime_type == APP_MIME_TYPE
    compose_file = await client.read_resource(f"compose://stacks/{project}/compose.yaml")
    assert compose_file.contents[0].text == (stacks.root / project / "compose.yaml").read_text()  # type: ignore[union-attr]
    for uri in (f"compose://stacks/{project}/../../etc/passwd", "file:///etc/passwd", "compose://stacks/%2e%2e/x"):
        with pytest.raises(MCPError):
            await client.read_resource(uri)

    templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
    # Every caller sees the approvals template; what it lists is filtered to what that caller may see.
    assert templates == {COMPOSE_FILE_TEMPLATE, STATUS_TEMPLATE, LOGS_TEMPLATE, APPROVAL_TEMPLATE}

    prompt = await client.get_prompt("diagnose_stack", {"project": project})
    text = prompt.messages[0].content.text  # type: ignore[union-attr]
    assert f'stack "{project}"' in text and "(2 of 2 running)" in text
    assert "| web |" in text and "| running | healthy |" in text and "| worker |" in text
    embedded = json.loads(prompt.messages[1].content.resource.text)  # type: ignore[union-attr]
    assert {s["service"]: s["state"] for s in embedded["services"]} == {"web": "running", "worker": "running"}

    by_prompt = await client.complete(
        PromptReference(type="ref/prompt", name="diagnose_stack"), {"name": "project", "value": project[:3]}
    )
    assert project in by_prompt.completion.values
    by_template = await client.complete(
        ResourceTemplateReference(type="ref/resource", uri=LOGS_TEMPLATE),
        {"name": "service", "value": "w"},
        {"project": project},
    )
    assert by_template.completion.values == ["web", "worker"]

    ps = next(tool for tool in (await client.list_tools()).tools if tool.name == "ps")
    assert (ps.meta or {})["ui"]["resourceUri"] == APP_URI
    app = await client.read_resource(APP_URI)
    assert app.contents[0].mime_type == APP_MIME_TYPE


async def test_the_surface_over_stdio(stacks: StackFactory, tmp_path: Path) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    async with stdio_client(stacks, tmp_path) as client:
        await walk(client, stacks, project)


async def test_the_surface_over_streamable_http(gateway: GatewayProcess, stacks: StackFactory) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    async with http_client(gateway) as client:
        await walk(client, stacks, project)


async def test_the_panel_token_reads_what_it_may_call_and_nothing_more(
    gateway: GatewayProcess, stacks: StackFactory
) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    compose_uri = f"compose://stacks/{project}/compose.yaml"
    async with http_client(gateway, gateway.panel_token) as panel:
        listed = {str(r.uri) for r in (await panel.list_resources()).resources}
        templates = {t.uri_template for t in (await panel.list_resource_templates()).resource_templates}
        status = await panel.read_resource(f"compose://stacks/{project}/status")
        with pytest.raises(MCPError) as refused:
            await panel.read_resource(compose_uri)
    # The panel may not call config, so it neither sees nor reads compose files; ps and logs it may.
    assert f"compose://stacks/{project}/status" in listed and compose_uri not in listed
    assert templates == {STATUS_TEMPLATE, LOGS_TEMPLATE, APPROVAL_TEMPLATE}
    assert json.loads(status.contents[0].text)["project"] == project  # type: ignore[union-attr]
    assert "may not call 'config'" in str(refused.value)
    assert (refused.value.error.data or {})["kind"] == "policy_violation"
    refusal = [json.loads(line) for line in gateway.audit.read_text().splitlines()][-1]
    assert (refusal["caller"], refusal["tool"], refusal["outcome"]) == (
        "status_panel_token",
        "resources/read",
        "refused",
    )
    assert refusal["arguments"] == {"uri": compose_uri}
    async with http_client(gateway) as agent:
        assert compose_uri in {str(r.uri) for r in (await agent.list_resources()).resources}
