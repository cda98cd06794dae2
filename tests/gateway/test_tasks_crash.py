"""A gateway killed mid-task: restarted, it reports the task failed (never working), and the key runs it once more."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import IDEMPOTENCY_META_KEY
from tests.conftest import StackFactory, free_port
from tests.gateway.conftest import start_gateway, stop_process
from tests.gateway.tasks_clients import (
    CreatedTask,
    LegacyHttp,
    TasksExtension,
    audit_lines,
    get_task,
    health_of,
    intents,
    meta_of,
    sdk_over_http,
    slow_stack,
)
from tests.polling import eventually, eventually_in_thread
from tests.processes import compose_up_pids

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_a_gateway_killed_mid_task_reports_it_failed_and_its_key_runs_it_once_more(
    tmp_path: Path, stacks: StackFactory
) -> None:
    project = stacks.make(slow_stack(5))
    port = free_port()
    arguments = {"project": project, "wait": True, "idempotency_key": "crash-1"}
    first = start_gateway(tmp_path, stacks.root, port=port)
    try:
        async with sdk_over_http(first.url, first.agent_token, TasksExtension()) as client:
            created = await client.session.call_tool("up", arguments, allow_claimed=True)
        assert isinstance(created, CreatedTask)
        task_id = created.task_id
        await eventually_in_thread(lambda: compose_up_pids(project), what="docker compose up to run")
        await eventually_in_thread(lambda: health_of(project) == "starting", what="the container to start")
        first.process.kill()  # SIGKILL: no drain, no outcome line, no last write
        first.process.wait()
    finally:
        stop_process(first.process)
    # Compose runs in a session of its own; it ends at its next write to the dead gateway (or when it is
    # done). Let it end, so that the retry runs alone.
    await eventually_in_thread(lambda: not compose_up_pids(project), timeout=60, what="the orphaned up to end")

    second = start_gateway(tmp_path, stacks.root, port=port)
    try:
        async with sdk_over_http(second.url, second.agent_token, TasksExtension()) as client:

            async def explained() -> dict[str, Any] | None:
                task = await get_task(client.session, task_id)
                assert task["status"] == "failed", task  # from the first answer on: never left working
                return task if "engine now shows" in task["error"]["message"] else None

            task = await eventually(explained, what="the restarted gateway to say what the engine shows")
        assert task is not None
        assert "stopped while this task ran" in task["statusMessage"]
        assert re.search(r"engine now shows: slow running \((starting|healthy)\)", task["statusMessage"])

        async with LegacyHttp(second.url, second.agent_token) as legacy:
            seen = await legacy.request("tasks/get", {"taskId": task_id})
            assert seen["status"] == "failed" and "stopped while this task ran" in seen["statusMessage"]

        async with sdk_over_http(second.url, second.agent_token) as client:
            retry = await client.call_tool("up", arguments)
            again = await client.call_tool("up", arguments)
    finally:
        stop_process(second.process)

    assert retry.structured_content is not None and retry.structured_content["ok"] is True
    info = meta_of(retry)[IDEMPOTENCY_META_KEY]
    assert info["call"] == "retried" and info["attempt"] == 2
    [cut_short] = info["interrupted"]
    assert "stopped while this call ran" in cut_short["reason"]
    assert meta_of(again)[IDEMPOTENCY_META_KEY]["call"] == "replayed"

    [record] = [json.loads(p.read_text()) for p in (tmp_path / f"state-{port}" / "keys").glob("*.json")]
    assert record["state"] == "done" and record["attempts"] == 2 and len(record["interrupted"]) == 1

    audit = tmp_path / f"state-{port}" / "audit.log"
    attempts = intents(audit, "up", project)
    assert [line["attempt"] for line in attempts] == [1, 2]
    assert {line["idempotency_key"] for line in attempts} == {"crash-1"}
    outcomes = {line["id"]: line for line in audit_lines(audit) if line["phase"] == "outcome"}
    assert outcomes[attempts[0]["id"]]["outcome"] == "unknown" and outcomes[attempts[0]["id"]]["recovered"]
    assert outcomes[attempts[1]["id"]]["outcome"] == "ok"
