"""Stacks as resources, through the SDK's client against the real server object.

Both eras of the protocol: ``auto`` negotiates 2026-07-28, ``legacy`` the initialize handshake.
Docker-backed where the resource shows live state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from gateway.engine.logs import MAX_TAIL
from gateway.mcp.approvals import APPROVAL_TEMPLATE
from gateway.mcp.dashboard import APP_URI
from gateway.mcp.resources import COMPOSE_FILE_TEMPLATE, LOGS_TEMPLATE, STATUS_TEMPLATE, tool_for_uri
from gateway.mcp.server import build_server
from gateway.operations import ComposeOperations
from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory

pytestmark = pytest.mark.anyio

MODES = pytest.mark.parametrize("mode", ["auto", "legacy"])
SIMPLE = "services:\n  app:\n    image: {image}\n    command: ['sleep', '60']\n    init: true\n"


def uris(listing: object) -> set[str]:
    return {str(r.uri) for r in listing.resources}  # type: ignore[attr-defined]


@MODES
async def test_each_stack_compose_file_is_listed_and_reads_as_written(
    ops: ComposeOperations, stacks: StackFactory, mode: str
) -> None:
    shop = stacks.make(SIMPLE)
    blog = stacks.make(SIMPLE.replace("app:", "blog:"))
    # A stack whose file has another of Compose's names is served under the same URI.
    (stacks.root / blog / "compose.yaml").rename(stacks.root / blog / "docker-compose.yml")
    async with Client(build_server(ops), mode=mode) as client:
        listed = await client.list_resources()
        shop_file = await client.read_resource(f"compose://stacks/{shop}/compose.yaml")
        blog_file = await client.read_resource(f"compose://stacks/{blog}/compose.yaml")
    assert {f"compose://stacks/{shop}/compose.yaml", f"compose://stacks/{blog}/compose.yaml"} <= uris(listed)
    assert {f"compose://stacks/{shop}/status", APP_URI} <= uris(listed)
    by_uri = {str(r.uri): r for r in listed.resources}
    assert by_uri[f"compose://stacks/{shop}/compose.yaml"].mime_type == "application/yaml"
    (content,) = shop_file.contents
    assert content.text == (stacks.root / shop / "compose.yaml").read_text()  # type: ignore[union-attr]
    assert content.mime_type == "application/yaml"
    assert "blog:" in blog_file.contents[0].text  # type: ignore[union-attr]


@MODES
async def test_the_templates_are_listed(ops: ComposeOperations, mode: str) -> None:
    async with Client(build_server(ops), mode=mode) as client:
        templates = {t.uri_template: t for t in (await client.list_resource_templates()).resource_templates}
    # One approval, by its id (compose://approvals/{id}), beside the stacks' three.
    assert set(templates) == {COMPOSE_FILE_TEMPLATE, STATUS_TEMPLATE, LOGS_TEMPLATE, APPROVAL_TEMPLATE}
    assert templates[LOGS_TEMPLATE].mime_type == "text/plain"
    assert str(MAX_TAIL) in (templates[LOGS_TEMPLATE].description or "")


@pytest.mark.parametrize(
    "uri",
    [
        "compose://stacks/../../etc/passwd",
        "compose://stacks/%2e%2e/compose.yaml",
        "compose://stacks/..%2F..%2Fetc/compose.yaml",
        "compose://stacks/x/../../../etc/passwd/compose.yaml",
        "compose://stacks/%2Fetc%2Fpasswd/compose.yaml",
        "compose://stacks/{stack}/../outside.txt",
        "compose://stacks/{stack}/.env",
        "compose://stacks/{stack}/compose.yaml/../outside.txt",
        "file://{root}/outside.txt",
        "file:///etc/passwd",
        "compose://{root}/outside.txt",
    ],
)
async def test_a_path_like_uri_reads_nothing(ops: ComposeOperations, stacks: StackFactory, uri: str) -> None:
    stack = stacks.make(SIMPLE, files={".env": "SECRET=in-the-env-file\n"})
    (stacks.root / "outside.txt").write_text("SECRET=outside-any-stack\n")
    target = uri.format(stack=stack, root=stacks.root)
    async with Client(build_server(ops)) as client:
        with pytest.raises(MCPError) as refused:
            await client.read_resource(target)
    assert "SECRET" not in str(refused.value)
    assert refused.value.error.code == -32602  # invalid params: nothing was read


async def test_a_compose_file_that_links_outside_its_folder_is_not_served(
    ops: ComposeOperations, stacks: StackFactory, tmp_path: Path
) -> None:
    stack = stacks.make(SIMPLE)
    secret = tmp_path / "elsewhere.yaml"
    secret.write_text("services: {}\n# SECRET\n")
    compose_file = stacks.root / stack / "compose.yaml"
    compose_file.unlink()
    os.symlink(secret, compose_file)
    async with Client(build_server(ops)) as client:
        with pytest.raises(MCPError) as refused:
            await client.read_resource(f"compose://stacks/{stack}/compose.yaml")
    assert "links outside its folder" in str(refused.value) and "SECRET" not in str(refused.value)


async def test_an_unknown_stack_reads_nothing_and_names_the_known_ones(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    stack = stacks.make(SIMPLE)
    async with Client(build_server(ops)) as client:
        with pytest.raises(MCPError) as refused:
            await client.read_resource("compose://stacks/nosuchstack/compose.yaml")
    assert "stack 'nosuchstack' not found" in str(refused.value) and stack in str(refused.value)
    assert (refused.value.error.data or {})["kind"] == "stack_not_found"


def test_every_gateway_uri_is_covered_by_the_scope_of_one_tool() -> None:
    assert tool_for_uri("compose://stacks/shop/compose.yaml") == "config"
    assert tool_for_uri("compose://stacks/shop/status") == "ps"
    assert tool_for_uri("compose://stacks/shop/logs?tail=5") == "logs"
    assert tool_for_uri(APP_URI) == "ps"
    assert tool_for_uri("compose://stacks/shop/other") is None


@pytest.mark.docker
async def test_status_and_logs_read_the_running_stack_within_the_logs_tool_limits(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    await ops.up(project, wait=True)
    async with Client(build_server(ops)) as client:
        status = json.loads((await client.read_resource(f"compose://stacks/{project}/status")).contents[0].text)  # type: ignore[union-attr]
        tail = await client.read_resource(f"compose://stacks/{project}/logs?service=worker&tail=3")
        grep = await client.read_resource(f"compose://stacks/{project}/logs?grep=tick%20[0-9]*1$")
        with pytest.raises(MCPError) as too_many:
            await client.read_resource(f"compose://stacks/{project}/logs?tail={MAX_TAIL + 1}")
        with pytest.raises(MCPError) as not_a_number:
            await client.read_resource(f"compose://stacks/{project}/logs?tail=true")
        with pytest.raises(MCPError) as bad_service:
            await client.read_resource(f"compose://stacks/{project}/logs?service=..%2Fweb")
    assert status["project"] == project
    assert {s["service"]: s["state"] for s in status["services"]} == {"web": "running", "worker": "running"}
    lines = tail.contents[0].text.splitlines()  # type: ignore[union-attr]
    assert len(lines) == 3 and all(line.startswith("worker | tick ") for line in lines)
    grepped = grep.contents[0].text.splitlines()  # type: ignore[union-attr]
    assert grepped and all(line.startswith("worker | tick ") and line.endswith("1") for line in grepped)
    assert f"from 1 to {MAX_TAIL}" in str(too_many.value) and f"from 1 to {MAX_TAIL}" in str(not_a_number.value)
    assert bad_service.value.error.code == -32602
