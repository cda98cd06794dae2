"""The tasks layer alone, in memory: the SDK's real server and client, and a write tool whose end the test decides.

The gateway's tests against the engine (test_tasks_http.py and others) prove the whole path; these
pin the rules that are slow or racy to reach through Compose: the limit of running tasks, a key given
back by a refusal, what a detached call may not do, and a runner that stops under a running call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, ElicitRequestParams, ElicitResult

from gateway.errors import ERROR_META_KEY, IDEMPOTENCY_META_KEY
from gateway.idempotency import KeyLedger
from gateway.mcp.tasks.calls import TaskCalls
from gateway.mcp.tasks.legacy import legacy_middleware
from gateway.mcp.tasks.methods import TaskMethods, TasksExtension
from gateway.mcp.tasks.runs import Runner
from gateway.tasks import MAX_WORKING_PER_OWNER, TaskStore, error_payload
from tests.gateway.tasks_clients import CreatedTask, cancel_task, get_task, meta_of
from tests.gateway.tasks_clients import TasksExtension as ClientTasks
from tests.polling import eventually

pytestmark = pytest.mark.anyio


class Tool:
    """An ``up`` that waits until the test lets it finish, and remembers what it saw."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.started = 0
        self.cancelled = 0
        self.could_elicit: list[bool] = []
        self.refuse_with: str | None = None


@asynccontextmanager
async def served(tool: Tool) -> AsyncIterator[tuple[MCPServer, Runner, list[tuple[str, str]]]]:
    refusals: list[tuple[str, str]] = []

    def audit_refusal(
        tool: str, arguments: dict[str, Any], caller: str, reason: str, *, on_behalf_of: str | None = None
    ) -> None:
        refusals.append((tool, reason))

    async def engine_now(project: str | None) -> str:
        return f"{project} as the engine shows it"

    runner = Runner(TaskStore(None), KeyLedger(None), engine_now)
    calls = TaskCalls(runner, audit_refusal=audit_refusal, write_tools=frozenset({"up"}))
    server = MCPServer("t", extensions=[TasksExtension(calls, TaskMethods(runner))])
    server.middleware.append(legacy_middleware(frozenset({"up"})))

    @server.tool()
    async def up(project: str, ctx: Context, idempotency_key: str | None = None) -> dict[str, Any]:
        tool.started += 1
        capabilities = ctx.client_capabilities
        tool.could_elicit.append(capabilities is not None and capabilities.elicitation is not None)
        if tool.refuse_with is not None:
            raise ToolError(tool.refuse_with)
        await ctx.report_progress(1, None, f"working on {project}")
        try:
            await tool.release.wait()
        except anyio.get_cancelled_exc_class():
            tool.cancelled += 1
            raise
        return {"project": project, "ok": True}

    async with anyio.create_task_group() as group:
        await group.start(runner.run)
        yield server, runner, refusals
        group.cancel_scope.cancel()


async def test_a_caller_runs_at_most_16_tasks_at_once_and_the_17th_is_refused_and_audited() -> None:
    tool = Tool()
    async with served(tool) as (server, runner, refusals), Client(server, extensions=[ClientTasks()]) as client:
        for i in range(MAX_WORKING_PER_OWNER):
            created = await client.session.call_tool("up", {"project": f"s{i}"}, allow_claimed=True)
            assert isinstance(created, CreatedTask)
        refused = await client.session.call_tool("up", {"project": "one-too-many"}, allow_claimed=True)
        assert isinstance(refused, CallToolResult) and refused.is_error
        text = refused.content[0].text  # type: ignore[union-attr]
        assert "16 tasks running" in text and refusals == [("up", text)]
        tool.release.set()

        async def all_ended() -> bool:
            return runner.tasks.working("local") == 0

        await eventually(all_ended, what="every task to end")


async def started(tool: Tool, count: int = 1) -> None:
    async def check() -> bool:
        return tool.started == count

    await eventually(check, what=f"{count} call(s) to start")


async def test_a_detached_call_cannot_ask_the_person_and_its_progress_reaches_tasks_get() -> None:
    tool = Tool()
    async with served(tool) as (server, _, _refusals):

        async def elicit(context: Any, params: ElicitRequestParams) -> ElicitResult:  # pragma: no cover
            raise AssertionError("a detached call asked the person")

        async with Client(server, extensions=[ClientTasks()], elicitation_callback=elicit) as client:
            created = await client.session.call_tool("up", {"project": "shop"}, allow_claimed=True)
            assert isinstance(created, CreatedTask)

            async def progressed() -> bool:
                return (await get_task(client.session, created.task_id)).get("statusMessage") == "working on shop"

            await eventually(progressed, what="the tool's progress in tasks/get")
            tool.release.set()

            async def completed() -> dict[str, Any] | None:
                task = await get_task(client.session, created.task_id)
                return task if task["status"] == "completed" else None

            task = await eventually(completed, what="the task to complete")
    assert task is not None and task["result"]["structuredContent"] == {"project": "shop", "ok": True}
    assert tool.could_elicit == [False]


async def test_a_refusal_before_the_call_acted_gives_its_key_back() -> None:
    tool = Tool()
    async with served(tool) as (server, _, _refusals), Client(server) as client:
        tool.refuse_with = "needs confirmation"
        first = await client.call_tool("up", {"project": "shop", "idempotency_key": "k"})
        assert first.is_error and meta_of(first)[IDEMPOTENCY_META_KEY]["call"] == "ran"
        # The SDK's own ToolError carries no kind: nothing of ours ran, so the key is free again.
        tool.refuse_with = None
        tool.release.set()
        again = await client.call_tool("up", {"project": "shop", "idempotency_key": "k"})
        assert not again.is_error and meta_of(again)[IDEMPOTENCY_META_KEY]["call"] == "ran"
        replayed = await client.call_tool("up", {"project": "shop", "idempotency_key": "k"})
    assert meta_of(replayed)[IDEMPOTENCY_META_KEY]["call"] == "replayed"
    assert tool.started == 2


async def test_a_keyed_call_outlives_the_request_that_stopped_waiting_and_a_repeat_joins_it() -> None:
    tool = Tool()
    async with served(tool) as (server, runner, _refusals), Client(server) as client:
        with anyio.move_on_after(0.5):  # the client gives up, as one with a short timeout would
            await client.call_tool("up", {"project": "shop", "idempotency_key": "k"})
        assert tool.started == 1 and tool.cancelled == 0

        async def joined_by_a_request() -> bool:
            record = runner.keys.get("local", "k")
            run = runner.by_key(record) if record is not None else None
            return run is not None and bool(run.followers)

        async def finish_soon() -> None:
            await eventually(joined_by_a_request, what="the repeat to join the running call")
            tool.release.set()

        async with anyio.create_task_group() as group:
            group.start_soon(finish_soon)
            joined = await client.call_tool("up", {"project": "shop", "idempotency_key": "k"})
    assert meta_of(joined)[IDEMPOTENCY_META_KEY]["call"] == "joined"
    assert joined.structured_content == {"project": "shop", "ok": True} and tool.started == 1


async def test_a_task_cancelled_while_its_call_runs_stops_the_call_and_ends_cancelled() -> None:
    tool = Tool()
    async with served(tool) as (server, _, _refusals), Client(server, extensions=[ClientTasks()]) as client:
        created = await client.session.call_tool("up", {"project": "shop"}, allow_claimed=True)
        assert isinstance(created, CreatedTask)
        await started(tool)
        await cancel_task(client.session, created.task_id)
        task = await get_task(client.session, created.task_id)
    assert tool.cancelled == 1
    assert task["status"] == "cancelled" and "shop as the engine shows it" in task["statusMessage"]


async def test_a_runner_that_stops_under_a_running_task_ends_it_interrupted() -> None:
    tool = Tool()
    async with served(tool) as (server, runner, _refusals), Client(server, extensions=[ClientTasks()]) as client:
        created = await client.session.call_tool("up", {"project": "shop"}, allow_claimed=True)
        assert isinstance(created, CreatedTask)
        await started(tool)
        record = runner.tasks.get("local", created.task_id)
        assert record is not None
    # The runner's task group has ended: the gateway stopped.
    assert record.state == "interrupted" and "the gateway stopped while this call ran" in (record.message or "")
    assert record.result == error_payload(record.message or "", "interrupted")
    assert record.result["_meta"][ERROR_META_KEY] == "interrupted"


async def test_an_error_result_ends_the_task_completed_and_comes_back_as_the_call_s_own() -> None:
    tool = Tool()
    tool.refuse_with = "nothing to do"
    tasks = ClientTasks()
    async with served(tool) as (server, _, _refusals), Client(server, extensions=[tasks]) as client:
        result = await client.call_tool("up", {"project": "shop"})
    # On the extension an error result is a completed task (failed is for protocol errors).
    assert result.is_error and "nothing to do" in result.content[0].text  # type: ignore[union-attr]
    [created] = tasks.created
    assert tasks.polls[created.task_id][-1]["status"] == "completed"
