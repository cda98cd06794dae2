"""The operations API against a real engine and the real Compose v2 CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import anyio
import docker
import pytest

from gateway.config import load_settings
from gateway.errors import (
    ComposeFailed,
    ComposeNotFound,
    EngineUnavailable,
    InvalidInput,
    PolicyViolation,
    StackNotFound,
)
from gateway.metrics import ControlPlane
from gateway.operations import ComposeOperations
from tests.conftest import NEVER_HEALTHY, STACK_FILES, WEB_WORKER, StackFactory, random_name
from tests.polling import eventually
from tests.processes import compose_pids

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


wait_until = eventually


async def test_up_ps_logs_and_down_on_a_two_service_stack(ops: ComposeOperations, stacks: StackFactory) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    listed = {s.name: s for s in (await ops.list_stacks()).stacks}
    assert listed[name].external is False and listed[name].containers == 0

    result = await ops.up(name, wait=True)
    assert result.ok and any("Started" in e or "Healthy" in e for e in result.events)

    ps = await ops.ps(name)
    by_service = {s.service: s for s in ps.services}
    assert set(by_service) == {"web", "worker"}
    assert by_service["web"].state == "running" and by_service["web"].health == "healthy"
    assert by_service["worker"].health is None
    assert by_service["web"].container == f"{name}-web-1"
    assert by_service["web"].started_at and by_service["web"].started_at.startswith("20")
    assert by_service["web"].image == stacks.image

    async def ticked() -> bool:
        return "tick 5" in (await ops.logs(name, services=["worker"], tail=50)).text

    await wait_until(ticked)
    logs = await ops.logs(name, tail=50)
    assert all(line.split(" | ", 1)[0] in {"web", "worker"} for line in logs.text.splitlines())
    grepped = await ops.logs(name, grep=r"tick [0-9]*5$", tail=100)
    assert grepped.lines >= 1 and all(line.endswith("5") for line in grepped.text.splitlines())

    await ops.down(name)
    assert (await ops.ps(name)).services[0].state == "missing"


async def test_ps_lists_defined_services_without_a_container_as_missing(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    await ops.up(name, services=["worker"])
    states = {s.service: s.state for s in (await ops.ps(name)).services}
    assert states == {"web": "missing", "worker": "running"}


async def test_stop_start_and_restart_change_the_state_engine_reports(
    ops: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    await ops.up(name)
    await ops.service_action("stop", name, services=["worker"])
    worker = docker_client.containers.get(f"{name}-worker-1")
    assert worker.status == "exited"
    ps = {s.service: s for s in (await ops.ps(name)).services}
    assert ps["worker"].state == "exited" and ps["worker"].exit_code is not None

    await ops.service_action("start", name, services=["worker"])
    worker.reload()
    assert worker.status == "running"
    before = worker.attrs["State"]["StartedAt"]
    first = {s.service: s.started_at for s in (await ops.ps(name)).services}

    await ops.service_action("restart", name, services=["worker"])
    worker.reload()
    assert worker.attrs["State"]["StartedAt"] != before
    # The cached start time must not survive a restart.
    second = {s.service: s.started_at for s in (await ops.ps(name)).services}
    assert second["worker"] != first["worker"] and second["web"] == first["web"]


async def test_down_keeps_named_volumes_unless_asked(
    ops: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    await ops.up(name)
    volume = f"{name}_data"
    await ops.down(name)
    assert docker_client.volumes.get(volume)
    await ops.up(name)
    await ops.down(name, volumes=True)
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(volume)


async def test_up_waits_for_a_healthy_dependency(ops: ComposeOperations, stacks: StackFactory) -> None:
    compose = """
services:
  db:
    image: {image}
    init: true
    command: ["sh", "-c", "sleep 1; touch /ready; sleep 3600"]
    healthcheck:
      test: ["CMD", "test", "-f", "/ready"]
      interval: 500ms
      retries: 20
  app:
    image: {image}
    init: true
    command: ["sleep", "3600"]
    depends_on:
      db:
        condition: service_healthy
"""
    name = stacks.make(compose)
    events: list[str] = []

    async def on_event(text: str) -> None:
        events.append(text)

    await ops.up(name, progress=on_event)
    healthy_at = next(i for i, e in enumerate(events) if "db-1" in e and "Healthy" in e)
    app_started_at = next(i for i, e in enumerate(events) if "app-1" in e and e.endswith("Started"))
    assert healthy_at < app_started_at
    states = {s.service: (s.state, s.health) for s in (await ops.ps(name)).services}
    assert states == {"db": ("running", "healthy"), "app": ("running", None)}


async def test_writes_on_one_stack_are_serialised(ops: ComposeOperations, stacks: StackFactory) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    order: list[str] = []
    up_running = anyio.Event()

    async def run(action: str) -> None:
        async def on_event(text: str) -> None:
            order.append(action)
            up_running.set()

        if action == "up":
            await ops.up(name, progress=on_event)
        else:
            await ops.down(name, progress=on_event)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "up")
        # down is asked for while up runs (its first event proves it holds the lock), so it must wait.
        with anyio.fail_after(30):
            await up_running.wait()
        assert ops.lifecycle.lock(name).locked()
        tg.start_soon(run, "down")
    # Events of the two runs never interleave: one whole run, then the other.
    switches = sum(1 for a, b in zip(order, order[1:], strict=False) if a != b)
    assert order[0] == "up" and switches == 1
    assert (await ops.ps(name)).services[0].state == "missing"


async def test_reads_do_not_wait_for_a_write(ops: ComposeOperations, stacks: StackFactory) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    await ops.up(name)
    write_running = anyio.Event()
    read_done = anyio.Event()

    async def on_event(text: str) -> None:
        # The writer holds the project's lock here until the read has finished; a read that waited
        # for the lock would never finish, and fail_after would fail the test.
        if not write_running.is_set():
            write_running.set()
            with anyio.fail_after(15):
                await read_done.wait()

    async def reader() -> None:
        await write_running.wait()
        assert ops.lifecycle.lock(name).locked()
        assert {s.service for s in (await ops.ps(name)).services} == {"web", "worker"}
        await ops.logs(name, tail=5)
        read_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await ops.service_action("restart", name, progress=on_event)
    assert read_done.is_set()


async def test_cancelling_an_up_stops_the_compose_process(ops: ComposeOperations, stacks: StackFactory) -> None:
    name = stacks.make(NEVER_HEALTHY)
    started = anyio.Event()

    async def on_event(text: str) -> None:
        if "Started" in text:
            started.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: ops.up(name, wait=True, progress=on_event))
        with anyio.fail_after(30):
            await started.wait()
        assert compose_pids(name), "the compose process should be running while up --wait waits"
        tg.cancel_scope.cancel()
    assert compose_pids(name) == []
    assert json.loads(ops.audit.path.read_text().splitlines()[-1])["outcome"] == "cancelled"  # type: ignore[union-attr]


async def test_folderless_projects_are_listed_as_external_and_can_be_restarted_and_brought_down(
    ops: ComposeOperations, stacks: StackFactory, tmp_path: Path
) -> None:
    name = random_name("ext")
    elsewhere = tmp_path / "elsewhere" / name
    elsewhere.mkdir(parents=True)
    (elsewhere / "compose.yaml").write_text(WEB_WORKER.replace("{image}", stacks.image))
    (elsewhere / "site").mkdir()
    (elsewhere / "site" / "index.html").write_text("x")
    stacks.track(name)
    subprocess.run(["docker", "compose", "up", "-d"], cwd=elsewhere, check=True, capture_output=True)

    info = {s.name: s for s in (await ops.list_stacks()).stacks}[name]
    assert info.external and info.running == 2
    assert {s.service for s in (await ops.ps(name)).services} == {"web", "worker"}
    await ops.service_action("restart", name, services=["worker"])
    with pytest.raises(InvalidInput, match="external"):
        await ops.up(name)
    with pytest.raises(InvalidInput, match="external"):
        await ops.config(name)
    await ops.down(name)
    assert name not in {s.name for s in (await ops.list_stacks()).stacks}


async def test_bad_input_is_refused_before_anything_runs(ops: ComposeOperations, stacks: StackFactory) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    for bad in ("../etc", "/etc/passwd", "Shop", "a/b", "", "-x", "x" * 64):
        with pytest.raises(InvalidInput, match=r"\^\[a-z0-9\]"):
            await ops.up(bad)
    with pytest.raises(StackNotFound, match=f"known stacks: .*{name}"):
        await ops.ps("no-such-stack")
    with pytest.raises(InvalidInput, match="service names"):
        await ops.service_action("restart", name, services=["../x"])
    await ops.up(name)
    with pytest.raises(InvalidInput, match="tail must be"):
        await ops.logs(name, tail=10_001)
    with pytest.raises(InvalidInput, match="regular expression"):
        await ops.logs(name, grep="(unclosed")
    with pytest.raises(InvalidInput, match="since"):
        await ops.logs(name, since="yesterday")
    with pytest.raises(InvalidInput, match="no container for service"):
        await ops.logs(name, services=["nope"])
    assert ops.metrics.snapshot()["by_tool"].get("restart") is None


async def test_a_malformed_compose_file_gives_composes_own_error(ops: ComposeOperations, stacks: StackFactory) -> None:
    name = stacks.make("services:\n  web: [unclosed\n")
    with pytest.raises(ComposeFailed, match="yaml"):
        await ops.config(name)
    with pytest.raises(ComposeFailed, match="yaml"):
        await ops.up(name)
    assert (await ops.ps(name)).services == []
    assert ops.metrics.snapshot()["failure_count"] >= 2


async def up_one_printer(ops: ComposeOperations, stacks: StackFactory, service: str, script: str, last: str) -> str:
    """Bring up a stack of one service running ``sh -c script``; return once its newest log line ends in ``last``."""
    name = stacks.make(
        f'services:\n  {service}:\n    image: {{image}}\n    init: true\n    command: ["sh", "-c", "{script}"]\n'
    )
    await ops.up(name)

    async def printed() -> bool:
        return (await ops.logs(name, tail=1)).text.endswith(last)

    await wait_until(printed, what=f"{service} printed {last!r}")
    return name


async def test_logs_keep_the_newest_lines_within_the_byte_cap(ops: ComposeOperations, stacks: StackFactory) -> None:
    name = await up_one_printer(ops, stacks, "talker", "seq 1 3000; sleep 3600", last="3000")
    logs = await ops.logs(name, tail=3000, max_bytes=2048)
    assert logs.truncated and logs.dropped_lines > 0
    assert logs.text.splitlines()[-1] == "talker | 3000"
    assert logs.lines + logs.dropped_lines == 3000
    assert len(logs.text.encode()) <= 2048


async def test_logs_since_excludes_older_lines(ops: ComposeOperations, stacks: StackFactory) -> None:
    name = await up_one_printer(ops, stacks, "once", "echo early; sleep 3600", last="early")
    assert (await ops.logs(name, since="2000-01-01T00:00:00Z")).lines == 1
    assert (await ops.logs(name, since="2099-01-01T00:00:00Z")).lines == 0


async def test_the_gateway_refuses_to_change_its_own_project(ops: ComposeOperations, stacks: StackFactory) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    ops.self_project = name
    with pytest.raises(PolicyViolation, match="supervisor"):
        await ops.down(name)
    assert (await ops.ps(name)).project == name  # reads stay allowed
    refusal = json.loads(ops.audit.path.read_text().splitlines()[-1])  # type: ignore[union-attr]
    assert refusal["outcome"] == "refused" and refusal["tool"] == "down"


async def test_an_unreachable_engine_names_the_docker_host_it_tried(stacks: StackFactory, tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/nothing.sock"
    settings = load_settings({"PATH": os.environ["PATH"]}, stacks_dir=stacks.root, docker_host=host)
    unreachable = ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, environ=dict(os.environ))
    with pytest.raises(EngineUnavailable, match=f"DOCKER_HOST={host}"):
        await unreachable.list_stacks()
    with pytest.raises(EngineUnavailable, match="dockerd"):
        await unreachable.ps("anything")
    assert unreachable.metrics.snapshot()["failure_count"] == 2
    unreachable.close()


async def test_every_mutation_is_audited_without_secrets(ops: ComposeOperations, stacks: StackFactory) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    await ops.up(name, caller="compose_agent_token")
    await ops.service_action("stop", name, services=["web"], caller="status_panel_token")
    records = [json.loads(line) for line in ops.audit.path.read_text().splitlines()]  # type: ignore[union-attr]
    # Each is announced before it runs, then its outcome follows under the same id.
    assert [(r["phase"], r["tool"], r["caller"], r.get("outcome")) for r in records] == [
        ("intent", "up", "compose_agent_token", None),
        ("outcome", "up", "compose_agent_token", "ok"),
        ("intent", "stop", "status_panel_token", None),
        ("outcome", "stop", "status_panel_token", "ok"),
    ]
    assert records[0]["id"] == records[1]["id"] != records[2]["id"] == records[3]["id"]
    assert records[3]["arguments"] == {"project": name, "services": ["web"]}
    assert all(r["control_plane"] == "compose_agent" for r in records)
    assert all(r["duration_ms"] > 0 for r in records if r["phase"] == "outcome")


async def test_a_relative_stacks_dir_works_like_an_absolute_one(
    stacks: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    monkeypatch.chdir(stacks.root.parent)
    settings = load_settings({"PATH": os.environ["PATH"]}, stacks_dir=Path(stacks.root.name))
    relative = ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, environ=dict(os.environ))
    try:
        assert (await relative.config(name)).config["services"]
        await relative.up(name, services=["worker"])
        assert {s.service: s.state for s in (await relative.ps(name)).services} == {
            "web": "missing",
            "worker": "running",
        }
    finally:
        relative.close()


async def test_locating_a_slow_compose_cli_does_not_block_other_calls_and_a_failure_is_remembered(
    stacks: StackFactory, tmp_path: Path
) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    calls = tmp_path / "calls"
    fake = tmp_path / "fake-compose"
    fake.write_text(f"#!/bin/sh\necho call >> {calls}\nsleep 1\nexit 1\n")
    fake.chmod(0o755)
    settings = load_settings({"PATH": os.environ["PATH"]}, stacks_dir=stacks.root, compose_bin=str(fake))
    slow = ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, environ=dict(os.environ))
    ticks = 0
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await anyio.sleep(0.01)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            with pytest.raises(ComposeNotFound, match="COMPOSE_BIN"):
                await slow.config(name)
            done.set()
        # The event loop went on while the CLI was asked for its version (a second, at least).
        assert ticks >= 10
        with pytest.raises(ComposeNotFound):
            await slow.up(name)
        assert calls.read_text().count("call") == 1  # the failure was remembered, not retried
    finally:
        slow.close()


async def test_a_mutation_refused_for_a_bad_service_name_is_audited(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    with pytest.raises(InvalidInput, match="service names"):
        await ops.up(name, services=["--remove-orphans"], caller="compose_agent_token")
    with pytest.raises(InvalidInput, match="service names"):
        await ops.service_action("stop", name, services=["web", "../x"], caller="status_panel_token")
    records = [json.loads(line) for line in ops.audit.path.read_text().splitlines()]  # type: ignore[union-attr]
    assert [(r["tool"], r["caller"], r["outcome"]) for r in records] == [
        ("up", "compose_agent_token", "refused"),
        ("stop", "status_panel_token", "refused"),
    ]
    assert records[1]["arguments"] == {"project": name, "services": ["web", "../x"]}
    assert ops.metrics.snapshot()["total_count"] == 0  # nothing reached Docker


async def test_a_stack_whose_file_broke_is_stopped_restarted_and_brought_down_on_its_last_judged_model(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    await ops.up(name)
    (stacks.root / name / "compose.yaml").write_text("services:\n  web: [this is not a service\n")

    # The files as they are now are not read: had Compose loaded them, it would have failed.
    stopped = await ops.service_action("stop", name)
    assert stopped.message == f"stop finished on '{name}'"
    assert {s.state for s in (await ops.ps(name)).services} == {"exited"}
    restarted = await ops.service_action("restart", name)
    assert restarted.message == f"restart finished on '{name}'"
    assert {s.state for s in (await ops.ps(name)).services} == {"running"}
    # up needs the model: it still refuses, with Compose's own error.
    with pytest.raises(ComposeFailed):
        await ops.up(name)
    await ops.down(name)
    assert (await ops.ps(name)).services == []


async def test_without_a_judged_model_kept_stop_and_down_act_by_the_project_label(
    ops: ComposeOperations, stacks: StackFactory, tmp_path: Path
) -> None:
    name = stacks.make(WEB_WORKER, files=STACK_FILES)
    await ops.up(name)
    # Another gateway (another state dir) has no judged model of this stack: it never read its files.
    settings = load_settings(
        {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "COMPOSE_AGENT_STATE_DIR": str(tmp_path / "other")},
        stacks_dir=stacks.root,
    )
    other = ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, environ=dict(os.environ))
    try:
        (stacks.root / name / "compose.yaml").write_text("services:\n  web: [this is not a service\n")
        stopped = await other.service_action("stop", name)
        assert "project label" in stopped.message and "no judged model" in stopped.message
        assert {s.state for s in (await other.ps(name)).services} == {"exited"}
        down = await other.down(name)
        assert "project label" in down.message
        assert (await other.ps(name)).services == []
    finally:
        other.close()
