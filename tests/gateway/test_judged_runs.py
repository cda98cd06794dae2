"""Compose runs exactly the judged model and nothing else (issue 20, phase 2), on the real engine.

``up`` runs the guard's model from a private file in the state dir; ``stop``, ``start``,
``restart`` and ``down`` act on that kept model, never on the files as they are by then; ``config``
shows it without running Compose again; the profiles a stack's ``.env`` turns on run as judged.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import docker
import pytest

from gateway.compose.cli import ComposeCli, ComposeOutput
from gateway.compose.runfile import EMPTY_ENV
from gateway.config import load_settings
from gateway.metrics import ControlPlane
from gateway.operations import ComposeOperations
from tests.conftest import StackFactory

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

MARKED = """
services:
  a:
    image: {image}
    init: true
    command: ["sleep", "3600"]
    volumes: ["./:/stack"]
"""
# Hooks and a key added after up: had stop, start, restart or down read the files, they would see them.
ADDED_AFTER_UP = """
    post_start:
      - command: ["touch", "/stack/POST_START"]
    pre_stop:
      - command: ["touch", "/stack/PRE_STOP"]
    environment: {ADDED: "after up"}
  b:
    image: {image}
    init: true
    command: ["sleep", "3600"]
"""


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """Every Compose command line the gateway runs, as it runs it."""
    seen: list[list[str]] = []
    real = ComposeCli.run

    async def recording(self: ComposeCli, project: str, args: Sequence[str], **options: Any) -> ComposeOutput:
        argv = self.command(
            project,
            options.get("compose_file"),
            args,
            profiles=options.get("profiles", ()),
            project_directory=options.get("project_directory"),
            env_file=options.get("env_file"),
        )
        seen.append(argv)
        return await real(self, project, args, **options)

    monkeypatch.setattr(ComposeCli, "run", recording)
    yield seen


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def _verb(argv: list[str]) -> str:
    """The Compose command of a command line: the first word after the global flags."""
    flags_with_values = {"--progress", "--project-name", "--file", "--profile", "--project-directory", "--env-file"}
    i = 1 if argv[0].endswith("docker-compose") else 2
    while i < len(argv):
        if argv[i] in flags_with_values:
            i += 2
        else:
            return argv[i]
    return ""


async def test_up_runs_the_judged_model_from_a_private_file_in_the_state_dir(
    ops: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient, runs: list[list[str]]
) -> None:
    name = stacks.make(MARKED)
    folder = stacks.root / name
    await ops.up(name)
    up = [argv for argv in runs if _verb(argv) == "up"]
    assert len(up) == 1
    run_file = Path(_flag(up[0], "--file") or "")
    # Not the stack's file, not in the stacks dir: the gateway's own, readable by it alone.
    assert run_file.is_file() and stacks.root not in run_file.parents
    assert stat.S_IMODE(run_file.stat().st_mode) == 0o600 and stat.S_IMODE(run_file.parent.stat().st_mode) == 0o700
    assert _flag(up[0], "--project-directory") == str(folder)
    assert _flag(up[0], "--env-file") == str(EMPTY_ENV)
    judged = (await ops.config(name)).config
    assert json.loads(run_file.read_text()) == judged
    container = docker_client.containers.list(filters={"label": f"com.docker.compose.project={name}"})[0]
    labels = container.labels
    assert labels["com.docker.compose.project.config_files"] == str(run_file)
    assert labels["com.docker.compose.project.working_dir"] == str(folder)
    # The bind resolved in the folder, as the guard judged it.
    assert {m["Source"] for m in container.attrs["Mounts"]} == {str(folder)}


async def test_a_hook_or_key_added_after_up_is_never_run_by_stop_start_restart_or_down(
    ops: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient, runs: list[list[str]]
) -> None:
    name = stacks.make(MARKED)
    folder = stacks.root / name
    await ops.up(name)
    compose = folder / "compose.yaml"
    compose.write_text(compose.read_text() + ADDED_AFTER_UP.replace("{image}", stacks.image))
    before = len(runs)
    await ops.service_action("stop", name)
    await ops.service_action("start", name)
    await ops.service_action("restart", name)
    assert not (folder / "POST_START").exists() and not (folder / "PRE_STOP").exists()
    (container,) = docker_client.containers.list(filters={"label": f"com.docker.compose.project={name}"})
    assert "ADDED=after up" not in container.attrs["Config"]["Env"]
    await ops.down(name)
    assert not (folder / "POST_START").exists() and not (folder / "PRE_STOP").exists()
    # Every one of them ran the model judged at up, never the stack's files as they are now.
    acted = runs[before:]
    assert [_verb(argv) for argv in acted] == ["stop", "start", "restart", "down"]
    for argv in acted:
        assert str(compose) not in argv and _flag(argv, "--file") != str(compose)
        assert Path(_flag(argv, "--file") or "/").parent.name != name
        assert _flag(argv, "--env-file") == str(EMPTY_ENV)
    # The control: once judged (an up now), the same hook runs, so the marker would have shown.
    await ops.up(name)
    assert (folder / "POST_START").exists()
    await ops.down(name)


async def test_the_profiles_the_env_turns_on_run_as_judged_and_a_later_env_changes_nothing(
    ops: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient, runs: list[list[str]]
) -> None:
    compose = (
        "services:\n  a:\n    image: {image}\n    init: true\n    command: ['sleep', '3600']\n"
        "  debug:\n    image: {image}\n    init: true\n    command: ['sleep', '3600']\n    profiles: [debug]\n"
        "  tools:\n    image: {image}\n    init: true\n    command: ['sleep', '3600']\n    profiles: [tools]\n"
    )
    name = stacks.make(compose, files={".env": "COMPOSE_PROFILES=debug\n"})
    await ops.up(name)
    services = {s.service for s in (await ops.ps(name)).services if s.state == "running"}
    assert services == {"a", "debug"}
    (up,) = [argv for argv in runs if _verb(argv) == "up"]
    assert _flag(up, "--profile") == "debug"
    # The judged model holds every profile; config shows it, and ps shows what up creates.
    shown = (await ops.config(name)).config["services"]
    assert isinstance(shown, dict) and set(shown) == {"a", "debug", "tools"}
    (stacks.root / name / ".env").write_text("COMPOSE_PROFILES=tools\n")
    await ops.service_action("restart", name)
    assert {c.labels["com.docker.compose.service"] for c in docker_client.containers.list(
        filters={"label": f"com.docker.compose.project={name}"}
    )} == {"a", "debug"}  # fmt: skip
    await ops.down(name)
    assert docker_client.containers.list(all=True, filters={"label": f"com.docker.compose.project={name}"}) == []


async def test_config_shows_the_judged_model_without_running_compose_again(
    ops: ComposeOperations, stacks: StackFactory, runs: list[list[str]]
) -> None:
    name = stacks.make(MARKED)
    first = await ops.config(name)
    assert [_verb(argv) for argv in runs] == ["config"]
    assert _flag(runs[0], "--profile") == "*"  # the guard's own run: every profile
    again = await ops.config(name)
    assert again == first and len(runs) == 1
    await ops.up(name)
    assert [_verb(argv) for argv in runs] == ["config", "up"]  # up reused the judgement too
    await ops.down(name)


async def test_the_judged_run_file_is_written_once_while_the_stack_is_unchanged(
    ops: ComposeOperations, stacks: StackFactory, runs: list[list[str]]
) -> None:
    name = stacks.make(MARKED)
    await ops.up(name)
    (up,) = [argv for argv in runs if _verb(argv) == "up"]
    run_file = Path(_flag(up, "--file") or "")
    written = os.stat(run_file)
    await ops.up(name)
    assert os.stat(run_file).st_ino == written.st_ino and os.stat(run_file).st_mtime_ns == written.st_mtime_ns
    (stacks.root / name / "compose.yaml").write_text(MARKED.replace("3600", "3601").replace("{image}", stacks.image))
    await ops.up(name)
    assert os.stat(run_file).st_ino != written.st_ino
    await ops.down(name)
    assert not run_file.exists()  # nothing of it runs any more: down forgets it


async def test_a_restarted_gateway_still_acts_on_the_last_judged_model(
    ops: ComposeOperations, stacks: StackFactory, audit_path: Path, runs: list[list[str]]
) -> None:
    name = stacks.make(MARKED)
    await ops.up(name)
    (up,) = [argv for argv in runs if _verb(argv) == "up"]
    # The same state dir, a new process: what the last up judged is still there.
    environ = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "COMPOSE_AGENT_STATE_DIR": str(audit_path.parent / "state"),
    }
    settings = load_settings(environ, stacks_dir=stacks.root)
    restarted = ComposeOperations.from_settings(settings, plane=ControlPlane.COMPOSE_AGENT, environ=dict(os.environ))
    try:
        (stacks.root / name / "compose.yaml").write_text("services:\n  a: [not a service\n")
        stopped = await restarted.service_action("stop", name)
        assert stopped.message == f"stop finished on '{name}'"
        assert _flag(runs[-1], "--file") == _flag(up, "--file")
        await restarted.down(name)
    finally:
        restarted.close()
