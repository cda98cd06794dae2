"""plan judges first and simulates only what was judged; a confirmation binds every file the model is
read from (issue 20, phase 2), on the real engine and Compose.

- A stack the guard refuses gets no Compose run past the judgement: no config hashes, no dry run.
- ``docker compose up --dry-run`` executes a provider's program for real (shown here on the
  installed Compose); so even a provider the operator allows never gets a dry run from ``plan``.
- A confirmation token handed out before an ``include``d file or an env file changed is void.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from gateway.audit import AuditLog
from gateway.compose.cli import ComposeCli, ComposeOutput
from gateway.errors import ERROR_META_KEY, ComposeFailed
from gateway.mcp.server import build_server
from gateway.operations import ComposeOperations
from gateway.policy.rules import Policy, StackRules
from tests.conftest import StackFactory, random_name
from tests.gateway.test_policy_engine import make_ops

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

TOKEN_RE = re.compile(r'confirm="([^"]+)"')
# A provider whose program writes PWNED into the folder it runs in (Compose runs it in its own cwd).
PROVIDER = "services:\n  a:\n    provider:\n      type: ./run.sh\n      options: {x: y}\n"
PROVIDER_FILES = {"run.sh": '#!/bin/sh\ntouch "$(dirname "$0")/PWNED"\necho \'{"type":"info","message":"ran"}\'\n'}


@pytest.fixture
def verbs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """The arguments of every Compose command the gateway runs (after the global flags)."""
    seen: list[list[str]] = []
    real = ComposeCli.run

    async def recording(self: ComposeCli, project: str, args: Sequence[str], **options: Any) -> ComposeOutput:
        seen.append(list(args))
        return await real(self, project, args, **options)

    monkeypatch.setattr(ComposeCli, "run", recording)
    yield seen


def _provider_stack(stacks: StackFactory) -> str:
    name = stacks.make(PROVIDER, files=PROVIDER_FILES)
    os.chmod(stacks.root / name / "run.sh", 0o755)
    return name


async def test_a_refused_stack_is_planned_without_any_compose_run_past_its_judgement(
    ops: ComposeOperations, stacks: StackFactory, verbs: list[list[str]]
) -> None:
    name = _provider_stack(stacks)
    plan = await ops.planner.plan(name)
    assert not plan.policy.allowed and plan.policy.rules == ["provider"]
    assert plan.actions == [] and any("not planned" in warning for warning in plan.warnings)
    assert verbs == [["config", "--format", "json"]]  # the guard's own run; no --hash, no --dry-run
    assert not (stacks.root / name / "PWNED").exists()
    # A candidate sent to plan (or deploy) is judged the same way, before anything else runs.
    verbs.clear()
    planned = await ops.planner.plan(name, PROVIDER)
    assert not planned.policy.allowed and planned.actions == [] and verbs == [["config", "--format", "json"]]
    assert not (stacks.root / name / "PWNED").exists()


async def test_a_provider_the_operator_allows_is_never_dry_run_by_plan(
    stacks: StackFactory, audit_path: Path, verbs: list[list[str]]
) -> None:
    name = _provider_stack(stacks)
    folder = stacks.root / name
    # What the guard protects against, shown on the Compose installed here: its dry run runs the program.
    cli = ComposeCli.locate(None, os.environ)
    with contextlib.suppress(ComposeFailed):  # it then finds no container to start: the program ran first
        await cli.run(
            random_name("dry"), ["up", "--dry-run", "--detach"], compose_file=folder / "compose.yaml", cwd=folder
        )
    assert (folder / "PWNED").exists()
    (folder / "PWNED").unlink()
    verbs.clear()

    audit = AuditLog(audit_path)
    ops = make_ops(stacks.root, audit, Policy(stacks={name: StackRules(allow=("provider",))}))
    try:
        plan = await ops.planner.plan(name)
    finally:
        ops.close()
        audit.close()
    assert plan.policy.allowed
    assert any("no dry run" in warning and "provider" in warning for warning in plan.warnings), plan.warnings
    assert not any("--dry-run" in args for args in verbs), verbs
    assert not (folder / "PWNED").exists()


async def test_an_ordinary_plan_simulates_the_judged_model_not_the_files(
    ops: ComposeOperations, stacks: StackFactory, verbs: list[list[str]]
) -> None:
    name = stacks.make("services:\n  a:\n    image: {image}\n    command: ['sleep', '3600']\n")
    plan = await ops.planner.plan(name)
    assert plan.policy.allowed and [(a.service, a.action) for a in plan.actions] == [("a", "create")]
    assert [args[0] for args in verbs] == ["config", "config", "up"]
    assert verbs[1] == ["config", "--hash", "*"] and "--dry-run" in verbs[2]


@pytest.mark.parametrize("changed", ["inner.yaml", "app.env"])
async def test_a_confirmation_is_void_once_a_file_the_model_is_read_from_changed(
    changed: str, ops: ComposeOperations, stacks: StackFactory
) -> None:
    name = stacks.make(
        "include: [inner.yaml]\nservices:\n  a:\n    image: {image}\n    init: true\n"
        "    command: ['sleep', '3600']\n    env_file: app.env\n",
        files={"inner.yaml": "services: {}\n", "app.env": "MODE=1\n"},
    )
    async with Client(build_server(ops, confirm=["up"])) as client:
        first = await client.call_tool("up", {"project": name})
        assert first.is_error and (first.meta or {}).get(ERROR_META_KEY) == "confirmation_required"
        token = TOKEN_RE.search(first.content[0].text).group(1)  # type: ignore[union-attr]
        # Neither the compose file nor the .env changed: only a file the model is read from.
        (stacks.root / name / changed).write_text((stacks.root / name / changed).read_text() + "\n# edited\n")
        late = await client.call_tool("up", {"project": name, "confirm": token})
        assert late.is_error and "changed since the plan was made" in late.content[0].text  # type: ignore[union-attr]
        again = await client.call_tool("up", {"project": name})
        token = TOKEN_RE.search(again.content[0].text).group(1)  # type: ignore[union-attr]
        done = await client.call_tool("up", {"project": name, "confirm": token})
        assert not done.is_error, done.content
        await client.call_tool("down", {"project": name})
