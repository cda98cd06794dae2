"""Tasks over stdio: 2025-11-25 spoken raw (progress and status on the one channel), 2026-07-28 through the SDK."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from gateway.errors import IDEMPOTENCY_META_KEY
from tests.conftest import StackFactory
from tests.gateway.tasks_clients import (
    LegacyStdio,
    TasksExtension,
    get_task,
    intents,
    meta_of,
    slow_stack,
    with_progress,
)
from tests.polling import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_tasks_over_stdio_on_both_revisions_and_across_a_restart(tmp_path: Path, stacks: StackFactory) -> None:
    project = stacks.make(slow_stack(3))
    args = ["-m", "gateway", "serve", "--transport", "stdio", "--stacks-dir", str(stacks.root)]
    audit = tmp_path / "state" / "audit.log"
    env = {**os.environ, "COMPOSE_AGENT_STATE_DIR": str(tmp_path / "state"), "AUDIT_LOG": str(audit)}

    async with LegacyStdio([sys.executable, *args], env) as peer:
        assert "tasks" in peer.initialize_result["capabilities"]
        call = {"name": "up", "arguments": {"project": project, "wait": True}, "task": {}}
        task_id = (await peer.request("tools/call", with_progress(call, 7)))["task"]["taskId"]

        async def progress_on_the_channel() -> bool:
            # Nobody waits in tasks/result yet: progress comes on the connection, under the call's token.
            return any(
                n["method"] == "notifications/progress" and n["params"]["progressToken"] == 7
                for n in peer.notifications
            )

        await eventually(progress_on_the_channel, what="progress of the task while nobody waits for it")
        result = await peer.request("tasks/result", {"taskId": task_id})
        assert result["structuredContent"]["ok"] is True

        async def status_told() -> bool:
            return any(
                n["method"] == "notifications/tasks/status" and n["params"]["status"] == "completed"
                for n in peer.notifications
            )

        await eventually(status_told, what="notifications/tasks/status at the end")
        assert [t["taskId"] for t in (await peer.request("tasks/list"))["tasks"]] == [task_id]

    # Another process on the same state folder: the task is still there, for the same caller (local).
    tasks = TasksExtension()
    params = StdioServerParameters(command=sys.executable, args=args, env=env)
    async with Client(params, extensions=[tasks]) as client:
        kept = await get_task(client.session, task_id)
        restarted = await client.call_tool("restart", {"project": project})
    async with Client(params) as client:
        keyed = await client.call_tool("restart", {"project": project, "idempotency_key": "r-1"})
        repeated = await client.call_tool("restart", {"project": project, "idempotency_key": "r-1"})

    assert kept["status"] == "completed" and kept["result"]["structuredContent"]["ok"] is True
    assert restarted.structured_content is not None and restarted.structured_content["ok"] is True
    assert len(tasks.created) == 1
    assert [meta_of(r)[IDEMPOTENCY_META_KEY]["call"] for r in (keyed, repeated)] == ["ran", "replayed"]
    assert len(intents(audit, "restart", project)) == 2  # the task, and the keyed call once
