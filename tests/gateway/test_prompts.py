"""Prompts built from a stack's live evidence, against a real engine."""

from __future__ import annotations

import json

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from gateway.mcp.server import build_server
from gateway.operations import ComposeOperations
from tests.conftest import StackFactory

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

# One healthy service, and one that says why it fails and exits 3.
TROUBLED = """
services:
  api:
    image: {image}
    init: true
    command: ["sh", "-c", "echo api listening on 8080; echo request served; sleep 3600"]
  db-client:
    image: {image}
    init: true
    restart: "no"
    command: ["sh", "-c", "echo connecting to db:5432; echo 'FATAL: connection refused by db:5432'; exit 3"]
"""


async def troubled_stack(ops: ComposeOperations, stacks: StackFactory) -> str:
    project = stacks.make(TROUBLED)
    await ops.up(project)
    # up returns once the failing service has started; wait until it has finished failing.
    with anyio.fail_after(30):
        while {s.service: s.state for s in (await ops.ps(project)).services}.get("db-client") != "exited":
            await anyio.sleep(0.05)
    return project


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_diagnose_stack_embeds_the_live_state_and_recent_error_lines(
    ops: ComposeOperations, stacks: StackFactory, mode: str
) -> None:
    project = await troubled_stack(ops, stacks)
    async with Client(build_server(ops), mode=mode) as client:
        listed = {p.name: p for p in (await client.list_prompts()).prompts}
        prompt = await client.get_prompt("diagnose_stack", {"project": project})
    assert [a.name for a in listed["diagnose_stack"].arguments or []] == ["project"]
    assert (listed["diagnose_stack"].arguments or [])[0].required
    text = prompt.messages[0].content.text  # type: ignore[union-attr]
    assert "(1 of 2 running)" in text
    assert "| api |" in text and "| running |" in text
    assert "| db-client |" in text and "| exited | - | 3 |" in text
    assert "db-client | FATAL: connection refused by db:5432" in text
    # Error lines only: the healthy service's chatter is left out.
    assert "request served" not in text and "connecting to db" not in text
    assert "most likely cause" in text and "next step" in text
    embedded = prompt.messages[1].content.resource  # type: ignore[union-attr]
    assert embedded.uri == f"compose://stacks/{project}/status" and embedded.mime_type == "application/json"
    assert {s["service"]: s["exit_code"] for s in json.loads(embedded.text)["services"]} == {  # type: ignore[union-attr]
        "api": None,
        "db-client": 3,
    }


async def test_triage_service_shows_that_services_state_and_its_latest_lines(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    project = await troubled_stack(ops, stacks)
    async with Client(build_server(ops)) as client:
        prompt = await client.get_prompt("triage_service", {"project": project, "service": "db-client"})
        with pytest.raises(MCPError) as unknown:
            await client.get_prompt("triage_service", {"project": project, "service": "cache"})
    text = prompt.messages[0].content.text  # type: ignore[union-attr]
    assert "db-client | connecting to db:5432" in text and "db-client | FATAL: connection refused" in text
    assert "| exited | - | 3 |" in text and "api |" not in text
    assert "has no service 'cache'" in str(unknown.value) and "api, db-client" in str(unknown.value)


async def test_a_prompt_for_a_bad_or_unknown_stack_says_what_to_send_instead(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    known = stacks.make("services:\n  app:\n    image: {image}\n")
    async with Client(build_server(ops)) as client:
        with pytest.raises(MCPError) as bad:
            await client.get_prompt("diagnose_stack", {"project": "../etc"})
        with pytest.raises(MCPError) as unknown:
            await client.get_prompt("diagnose_stack", {"project": "nosuchstack"})
    assert "paths are not accepted" in str(bad.value) and bad.value.error.code == -32602
    assert "not found" in str(unknown.value) and known in str(unknown.value)
