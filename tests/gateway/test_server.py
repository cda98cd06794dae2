"""The MCP server through the SDK's in-memory client: schemas, annotations, progress, scopes, errors."""

from __future__ import annotations

import json
from typing import cast

import anyio
import pytest
from mcp import Client
from mcp_types import RequestParamsMeta

from gateway.audit import ON_BEHALF_OF_META_KEY, on_behalf_of_meta
from gateway.errors import CONFIRM_META_KEY, ERROR_META_KEY
from gateway.mcp.server import build_server
from gateway.operations import ComposeOperations
from tests.conftest import NEVER_HEALTHY, STACK_FILES, WEB_WORKER, StackFactory
from tests.processes import compose_pids

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

READ_TOOLS = {"list_stacks", "ps", "logs", "config", "plan", "versions"}
APPROVE_TOOLS = {"approve", "reject"}  # a person's decision on a change that waits: they take the approval's id
ALL_TOOLS = READ_TOOLS | {"up", "down", "restart", "start", "stop", "deploy", "rollback"} | APPROVE_TOOLS


def _person(name: str) -> RequestParamsMeta:
    """The `_meta` naming the person a call is made for."""
    return cast(RequestParamsMeta, on_behalf_of_meta(name))


async def test_every_tool_has_schemas_and_truthful_annotations(ops: ComposeOperations) -> None:
    async with Client(build_server(ops)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == ALL_TOOLS
    for name, tool in tools.items():
        assert tool.output_schema is not None, name
        assert tool.description and len(tool.description) > 40, name
        assert tool.annotations is not None
        assert tool.annotations.read_only_hint is (name in READ_TOOLS), name
        # deploy and rollback may replace or remove services, as down removes them.
        assert tool.annotations.destructive_hint is (name in {"down", "deploy", "rollback"}), name
        if name in APPROVE_TOOLS:
            assert tool.input_schema["required"] == ["id"], name
        elif name != "list_stacks":
            assert "project" in tool.input_schema["required"], name
    assert tools["restart"].annotations.idempotent_hint is False  # type: ignore[union-attr]
    assert tools["up"].annotations.idempotent_hint is True  # type: ignore[union-attr]
    for name in ("up", "restart", "start", "stop", "logs"):
        assert "services" in tools[name].input_schema["properties"], name
    for name in ("tail", "since", "grep"):
        assert name in tools["logs"].input_schema["properties"]
    assert tools["logs"].input_schema["properties"]["tail"]["maximum"] == 10_000


async def test_read_only_mode_offers_only_the_read_tools(ops: ComposeOperations) -> None:
    async with Client(build_server(ops, read_only=True)) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        result = await client.call_tool("down", {"project": "anything"})
    assert names == READ_TOOLS
    assert result.is_error and result.structured_content is None
    assert "this gateway runs in --read-only mode" in result.content[0].text  # type: ignore[union-attr]
    assert result.meta is not None and result.meta[ERROR_META_KEY] == "policy_violation"


async def test_up_sends_progress_notifications_while_it_runs(ops: ComposeOperations, stacks: StackFactory) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    updates: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, message))

    async with Client(build_server(ops)) as client:
        result = await client.call_tool("up", {"project": name}, progress_callback=on_progress)
        assert not result.is_error, result.content
        ps = await client.call_tool("ps", {"project": name})
    messages = [m for _, m in updates]
    assert any(m and m.endswith(f"{name}-web-1: Started") for m in messages)
    assert [p for p, _ in updates] == sorted(p for p, _ in updates)  # monotonic, as the spec requires
    assert result.structured_content is not None and result.structured_content["events"] == messages
    assert {s["service"]: s["state"] for s in ps.structured_content["services"]} == {
        "web": "running",
        "worker": "running",
    }


async def test_ps_structured_content_has_the_contract_fields(ops: ComposeOperations, stacks: StackFactory) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    async with Client(build_server(ops)) as client:
        await client.call_tool("up", {"project": name, "wait": True})
        result = await client.call_tool("ps", {"project": name})
    content = result.structured_content
    assert content is not None and content["project"] == name
    for service in content["services"]:
        assert {"service", "container", "state", "health", "exit_code", "ports", "image"} <= set(service)
    assert json.loads(result.content[0].text) == content  # type: ignore[union-attr]


async def test_failures_are_tool_results_that_say_what_to_do(ops: ComposeOperations, stacks: StackFactory) -> None:
    known = stacks.make(WEB_WORKER, files=STACK_FILES)
    async with Client(build_server(ops)) as client:
        unknown = await client.call_tool("ps", {"project": "nope"})
        path_like = await client.call_tool("up", {"project": "../../etc"})
        too_much = await client.call_tool("logs", {"project": known, "tail": 50_000})
        bad_regex = await client.call_tool("logs", {"project": known, "grep": "[a-"})
    assert unknown.is_error and "known stacks: " in unknown.content[0].text  # type: ignore[union-attr]
    assert known in unknown.content[0].text.split("known stacks: ")[1].split(", ")  # type: ignore[union-attr]
    assert path_like.is_error and "paths are not accepted" in path_like.content[0].text  # type: ignore[union-attr]
    assert too_much.is_error and "10000" in too_much.content[0].text  # type: ignore[union-attr]
    assert bad_regex.is_error and "regular expression" in bad_regex.content[0].text  # type: ignore[union-attr]
    # Programs get the kind in _meta, and no structuredContent that a client would check against the
    # output schema; the SDK's own argument checks (tail) are answered the same way.
    assert unknown.structured_content is None and (unknown.meta or {}).get(ERROR_META_KEY) == "stack_not_found"
    assert too_much.structured_content is None and (too_much.meta or {}).get(ERROR_META_KEY) == "invalid_input"
    assert "'tail'" in too_much.content[0].text  # type: ignore[union-attr]
    assert path_like.structured_content is None and (path_like.meta or {}).get(ERROR_META_KEY) == "invalid_input"
    assert bad_regex.structured_content is None and (bad_regex.meta or {}).get(ERROR_META_KEY) == "invalid_input"


async def test_cancelling_a_call_stops_its_compose_process(ops: ComposeOperations, stacks: StackFactory) -> None:
    name = stacks.make(NEVER_HEALTHY)
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message and message.endswith("Started"):
            started.set()

    async with Client(build_server(ops)) as client:
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                await client.call_tool("up", {"project": name, "wait": True}, progress_callback=on_progress)

            tg.start_soon(call)
            with anyio.fail_after(30):
                await started.wait()
            tg.cancel_scope.cancel()
        with anyio.fail_after(15):
            while True:
                records = [json.loads(line) for line in ops.audit.path.read_text().splitlines()]  # type: ignore[union-attr]
                if records and records[-1]["outcome"] == "cancelled":
                    break
                await anyio.sleep(0.1)
        # No Compose process of this project is left running.
        with anyio.fail_after(15):
            while compose_pids(name):
                await anyio.sleep(0.1)
        # The server is still usable after the cancellation.
        assert not (await client.call_tool("ps", {"project": name})).is_error


async def test_a_string_is_never_taken_for_a_boolean_or_an_integer(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    async with Client(build_server(ops)) as client:
        down = await client.call_tool("down", {"project": name, "volumes": "true"})
        logs = await client.call_tool("logs", {"project": name, "tail": "5"})
        stamps = await client.call_tool("logs", {"project": name, "timestamps": "false"})
    for result, argument, expected in (
        (down, "volumes", "boolean"),
        (logs, "tail", "integer"),
        (stamps, "timestamps", "boolean"),
    ):
        assert result.is_error and (result.meta or {}).get(ERROR_META_KEY) == "invalid_input"
        text = result.content[0].text  # type: ignore[union-attr]
        assert f"'{argument}'" in text and expected in text and "got a string" in text, text
    # Nothing ran: the down was refused at the protocol edge, and audited as such, with no intent.
    assert ops.audit is not None
    downs = [json.loads(line) for line in ops.audit.path.read_text().splitlines() if '"down"' in line]
    assert [(r["phase"], r["outcome"]) for r in downs] == [("outcome", "refused")]
    assert "'volumes'" in downs[0]["error"] and downs[0]["caller"] == "local"


async def test_the_person_named_in_meta_is_in_the_audit_lines_and_a_malformed_name_is_refused(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    async with Client(build_server(ops)) as client:
        acted = await client.call_tool("stop", {"project": name}, meta=_person("alice"))
        unnamed = await client.call_tool("stop", {"project": name})
        malformed = await client.call_tool("stop", {"project": name}, meta=_person("eve\nforged"))
    assert not acted.is_error and not unnamed.is_error
    assert malformed.is_error and (malformed.meta or {}).get(ERROR_META_KEY) == "invalid_input"
    assert ON_BEHALF_OF_META_KEY in malformed.content[0].text  # type: ignore[union-attr]
    assert ops.audit is not None
    stops = [json.loads(line) for line in ops.audit.path.read_text().splitlines() if '"stop"' in line]
    assert [(r["phase"], r.get("outcome"), r.get("on_behalf_of")) for r in stops] == [
        ("intent", None, "alice"),
        ("outcome", "ok", "alice"),
        ("intent", None, None),
        ("outcome", "ok", None),
        ("outcome", "refused", None),
    ]
    assert all(r["caller"] == "local" for r in stops)


async def test_a_call_that_needs_confirming_carries_its_token_in_meta_as_in_its_text(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    async with Client(build_server(ops, confirm=["down"])) as client:
        first = await client.call_tool("down", {"project": name})
        meta = first.meta or {}
        assert first.is_error and meta.get(ERROR_META_KEY) == "confirmation_required"
        token = meta.get(CONFIRM_META_KEY)
        assert isinstance(token, str) and f'confirm="{token}"' in first.content[0].text  # type: ignore[union-attr]
        done = await client.call_tool("down", {"project": name, "confirm": token})
    assert not done.is_error, done.content
