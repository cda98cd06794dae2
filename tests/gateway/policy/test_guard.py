"""The guard's own seams, as phase 2 of issue 20 uses them: a reused verdict comes with the model and
reading it was judged on, the neighbourhood comes from the stacks dir and the hooks it is given, and
a candidate is judged from its own bytes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.compose.cli import ComposeCli
from gateway.policy.guard import PolicyGuard
from gateway.policy.rules import Policy
from gateway.stacks import Stack, find_stack
from tests.conftest import StackFactory
from tests.gateway.policy.harness import CountingCli
from tests.gateway.policy_cases import ORDINARY, ordinary_files

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


@pytest.fixture(scope="module")
def cli() -> ComposeCli:
    return ComposeCli.locate(None, os.environ)


def stack_of(stacks: StackFactory, compose: str, files: dict[str, str] | None = None) -> Stack:
    stack = find_stack(stacks.root, stacks.make(compose, files=files))
    assert stack is not None
    return stack


async def test_a_reused_verdict_comes_with_the_model_and_reading_it_was_judged_on(
    stacks: StackFactory, cli: ComposeCli
) -> None:
    stack = stack_of(stacks, "services:\n  a:\n    image: {image}\n    env_file: app.env\n", {"app.env": "A=1\n"})
    counting = CountingCli(cli)
    guard = PolicyGuard(Policy())
    first = await guard.enforce(stack, counting, "up")
    again = await guard.enforce(stack, counting, "up")
    assert len(counting.runs) == 1 and not first.reused and again.reused
    assert again.model == first.model and again.model["services"]["a"]["environment"] == {"A": "1"}
    assert again.reading is not None and first.reading is not None
    assert again.reading.digest == first.reading.digest
    assert stack.folder is not None
    (stack.folder / "app.env").write_text("A=2\n")
    changed = await guard.enforce(stack, counting, "up")
    assert not changed.reused and changed.reading is not None and changed.reading.digest != first.reading.digest


async def test_the_neighbourhood_is_the_stacks_dir_the_engines_projects_and_the_gateways_own(
    stacks: StackFactory, cli: ComposeCli
) -> None:
    stack = stack_of(stacks, "services:\n  a:\n    image: {image}\n")
    (stacks.root / "other").mkdir()
    (stacks.root / "Not-A-Stack").mkdir()
    guard = PolicyGuard(Policy(), self_project="compose-agent", projects=lambda: ["running"])
    context = guard.context(stack)
    assert context.neighbours == frozenset({"other", "running"})
    assert context.self_project == "compose-agent" and context.stack == stack.name


async def test_a_candidate_is_judged_from_its_own_bytes_not_the_folders(
    stacks: StackFactory, cli: ComposeCli, tmp_path: Path
) -> None:
    stack = stack_of(stacks, "services:\n  a:\n    image: {image}\n    privileged: true\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "compose.yaml").write_text(f"services:\n  a:\n    image: {stacks.image}\n")
    (scratch / ".env").write_text("")
    guard = PolicyGuard(Policy())
    candidate = await guard.evaluate(stack, cli, source=scratch / "compose.yaml", env_file=scratch / ".env")
    assert candidate.verdict.allowed, candidate.verdict
    assert (await guard.evaluate(stack, cli)).verdict.rules == ["privileged"]
    (scratch / ".env").write_text("COMPOSE_BAKE=1\n")
    steered = await guard.evaluate(stack, cli, source=scratch / "compose.yaml", env_file=scratch / ".env")
    assert steered.verdict.rules == ["compose_env"]


async def test_the_judged_model_fed_back_to_compose_is_the_model_judged(
    stacks: StackFactory, cli: ComposeCli, tmp_path: Path
) -> None:
    # Phase 2 runs the judged model from a private file: it must normalise to itself, $$ escapes,
    # resolved env files, merged includes and extends included, with an empty .env beside it.
    compose = ORDINARY.replace('    command: ["sleep", "3600"]\n', '    command: ["sh", "-c", "echo $$HOME"]\n', 1)
    stack = stack_of(stacks, compose, ordinary_files(stacks.image))
    assert stack.folder is not None
    judged = await PolicyGuard(Policy()).evaluate(stack, cli)
    assert judged.verdict.allowed, judged.verdict
    private, empty = tmp_path / "judged.json", tmp_path / "empty.env"
    private.write_text(json.dumps(judged.model))
    empty.write_text("")
    again = await cli.run(
        stack.name,
        ["config", "--format", "json"],
        compose_file=private,
        cwd=stack.folder,
        profiles=["*"],
        project_directory=stack.folder,
        env_file=empty,
    )
    assert json.loads(again.stdout) == judged.model
    assert "echo $$HOME" in again.stdout
