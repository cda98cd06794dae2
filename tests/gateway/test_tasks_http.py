"""Tasks and idempotency keys on a real gateway over Streamable HTTP, on both protocol revisions.

2025-11-25 is spoken as raw JSON-RPC (the SDK's client cannot make a task-augmented call on it);
2026-07-28 through the SDK's own client and its extension interface (see tasks_clients.py).
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from gateway.errors import ERROR_META_KEY, IDEMPOTENCY_META_KEY
from tests.conftest import NEVER_HEALTHY, StackFactory
from tests.gateway.conftest import GatewayProcess
from tests.gateway.tasks_clients import (
    CreatedTask,
    LegacyHttp,
    RpcError,
    TasksExtension,
    audit_lines,
    cancel_task,
    get_task,
    health_of,
    intents,
    meta_of,
    sdk_over_http,
    slow_stack,
    with_progress,
)
from tests.polling import eventually, eventually_in_thread
from tests.processes import compose_up_pids

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

WRITE_TOOLS = {"up", "down", "restart", "start", "stop", "deploy", "rollback"}


async def test_a_2025_11_25_task_answers_at_once_and_only_its_owner_follows_it(
    gateway: GatewayProcess, stacks: StackFactory
) -> None:
    project = stacks.make(slow_stack(4))
    async with LegacyHttp(gateway.url, gateway.agent_token) as owner:
        assert owner.initialize_result["capabilities"]["tasks"] == {
            "list": {},
            "cancel": {},
            "requests": {"tools": {"call": {}}},
        }
        listed = {t["name"]: t.get("execution") for t in (await owner.request("tools/list"))["tools"]}
        assert {name for name, e in listed.items() if e == {"taskSupport": "optional"}} == WRITE_TOOLS

        call = {"name": "up", "arguments": {"project": project, "wait": True}, "task": {"ttl": 600_000}}
        created = (await owner.request("tools/call", with_progress(call, "up-1")))["task"]
        # The handle comes back while Compose still waits for the healthcheck.
        assert created["status"] == "working" and created["ttl"] == 600_000
        assert health_of(project) != "healthy"
        task_id = created["taskId"]

        async with LegacyHttp(gateway.url, gateway.panel_token) as stranger:
            for method in ("tasks/get", "tasks/result", "tasks/cancel"):
                with pytest.raises(RpcError) as refused:
                    await stranger.request(method, {"taskId": task_id})
                assert refused.value.code == -32602 and "not found" in refused.value.message
            assert (await stranger.request("tasks/list"))["tasks"] == []

        async def progress_shown() -> str | None:
            task = await owner.request("tasks/get", {"taskId": task_id})
            assert task["status"] in ("working", "completed")
            return task.get("statusMessage") if task["status"] == "working" else None

        shown = await eventually(progress_shown, what="a status message while the task works")
        assert shown is not None and project in shown

        result = await owner.request("tasks/result", {"taskId": task_id})
        assert result["structuredContent"]["ok"] is True and not result.get("isError")
        assert result["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task_id}
        assert health_of(project) == "healthy"
        progress = [n["params"] for n in owner.notifications if n["method"] == "notifications/progress"]
        assert progress and {p["progressToken"] for p in progress} == {"up-1"}

        done = await owner.request("tasks/get", {"taskId": task_id})
        assert done["status"] == "completed" and done["statusMessage"] == f"up finished on '{project}'"
        assert task_id in [t["taskId"] for t in (await owner.request("tasks/list"))["tasks"]]
        with pytest.raises(RpcError) as terminal:
            await owner.request("tasks/cancel", {"taskId": task_id})
        assert "terminal status 'completed'" in terminal.value.message

    [intent] = intents(gateway.audit, "up", project)
    assert intent["task"] == task_id and intent["caller"] == "compose_agent_token"


async def test_a_2026_07_28_task_through_the_sdk_client_extension(
    gateway: GatewayProcess, stacks: StackFactory
) -> None:
    project = stacks.make(slow_stack(3))
    tasks = TasksExtension()
    async with sdk_over_http(gateway.url, gateway.agent_token, tasks) as client:
        result = await client.call_tool("up", {"project": project, "wait": True})
    assert result.structured_content is not None and result.structured_content["ok"] is True
    [created] = tasks.created
    polls = tasks.polls[created.task_id]
    assert created.status == "working"
    assert any(p["status"] == "working" and project in p.get("statusMessage", "") for p in polls)
    assert polls[-1]["status"] == "completed" and polls[-1]["result"]["structuredContent"]["ok"] is True
    assert polls[-1]["ttlMs"] > 0

    async with sdk_over_http(gateway.url, gateway.panel_token, TasksExtension()) as stranger:
        for ask in (get_task, cancel_task):
            with pytest.raises(MCPError) as refused:
                await ask(stranger.session, created.task_id)
            assert refused.value.code == -32602
    # Without the extension on the request, the same call answers synchronously, as it always did.
    async with sdk_over_http(gateway.url, gateway.agent_token) as plain:
        again = await plain.call_tool("restart", {"project": project})
    assert again.structured_content is not None and again.structured_content["action"] == "restart"


async def test_one_key_sent_three_times_runs_compose_once(gateway: GatewayProcess, stacks: StackFactory) -> None:
    project = stacks.make(slow_stack(3))
    arguments = {"project": project, "wait": True, "idempotency_key": "deploy-42"}
    results: list[Any] = []

    async with sdk_over_http(gateway.url, gateway.agent_token) as client:

        async def send() -> None:
            results.append(await client.call_tool("up", arguments))

        async with anyio.create_task_group() as group:
            group.start_soon(send)
            group.start_soon(send)
        results.append(await client.call_tool("up", arguments))
        other_tool = await client.call_tool("down", {"project": project, "idempotency_key": "deploy-42"})
        other_arguments = await client.call_tool("up", {**arguments, "wait": False})

    assert all(r.structured_content and r.structured_content["ok"] for r in results)
    calls = [meta_of(r)[IDEMPOTENCY_META_KEY]["call"] for r in results]
    assert sorted(calls[:2]) == ["joined", "ran"] and calls[2] == "replayed"
    assert len({json.dumps(r.structured_content, sort_keys=True) for r in results}) == 1
    for refused in (other_tool, other_arguments):
        assert refused.is_error and meta_of(refused)[ERROR_META_KEY] == "idempotency_conflict"
    assert "first used" in other_tool.content[0].text  # type: ignore[union-attr]

    [intent] = intents(gateway.audit, "up", project)
    assert intent["idempotency_key"] == "deploy-42" and intent["attempt"] == 1
    assert not intents(gateway.audit, "down", project)
    refusals = [line for line in audit_lines(gateway.audit) if line.get("outcome") == "refused"]
    assert {line["tool"] for line in refusals} == {"down", "up"}


async def test_tasks_cancel_stops_compose_and_says_how_the_stack_was_left(
    gateway: GatewayProcess, stacks: StackFactory
) -> None:
    project = stacks.make(NEVER_HEALTHY)
    async with LegacyHttp(gateway.url, gateway.agent_token) as peer:
        call = {"name": "up", "arguments": {"project": project, "wait": True}, "task": {}}
        task_id = (await peer.request("tools/call", call))["task"]["taskId"]
        await eventually_in_thread(lambda: compose_up_pids(project), what="docker compose up to run")
        # Compose has started the container and now waits for a health that never comes.
        await eventually_in_thread(lambda: health_of(project) == "starting", what="the container to start")

        cancelled = await peer.request("tasks/cancel", {"taskId": task_id})
        assert cancelled["status"] == "cancelled"
        assert compose_up_pids(project) == []
        result = await peer.request("tasks/result", {"taskId": task_id})
        text = result["content"][0]["text"]
        assert result["isError"] and result["_meta"][ERROR_META_KEY] == "cancelled"
        assert "left as Compose left it" in text and "never-healthy running" in text
        with pytest.raises(RpcError, match="terminal status 'cancelled'"):
            await peer.request("tasks/cancel", {"taskId": task_id})
    [outcome] = [line for line in audit_lines(gateway.audit) if line["phase"] == "outcome" and line["tool"] == "up"]
    assert outcome["outcome"] == "cancelled"


async def test_a_2026_07_28_cancel_is_acknowledged_and_ends_the_task_cancelled(
    gateway: GatewayProcess, stacks: StackFactory
) -> None:
    project = stacks.make(NEVER_HEALTHY)
    async with sdk_over_http(gateway.url, gateway.agent_token, TasksExtension()) as client:
        created = await client.session.call_tool("up", {"project": project, "wait": True}, allow_claimed=True)
        assert isinstance(created, CreatedTask)
        task_id = created.task_id
        await eventually_in_thread(lambda: compose_up_pids(project), what="docker compose up to run")
        ack = await cancel_task(client.session, task_id)
        assert ack["resultType"] == "complete" and set(ack) <= {"resultType", "_meta"}
        task = await get_task(client.session, task_id)
    assert task["status"] == "cancelled" and "left as Compose left it" in task["statusMessage"]
    assert compose_up_pids(project) == []


async def test_the_synchronous_path_is_unchanged_without_a_task_or_a_key(
    gateway: GatewayProcess, stacks: StackFactory
) -> None:
    project = stacks.make(slow_stack(1))
    async with LegacyHttp(gateway.url, gateway.agent_token) as peer:
        call = {"name": "up", "arguments": {"project": project, "wait": True}}
        result = await peer.request("tools/call", with_progress(call, "plain"))
    assert "task" not in result and result["structuredContent"]["ok"] is True
    assert [n["params"]["progressToken"] for n in peer.notifications if n["method"] == "notifications/progress"]
    [intent] = intents(gateway.audit, "up", project)
    assert "task" not in intent and "idempotency_key" not in intent
