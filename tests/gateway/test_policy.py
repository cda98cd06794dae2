"""The policy guard on real compose files, judged on the real Compose v2 CLI's model.

These tests judge stacks without the engine creating anything; ``test_policy_engine.py`` drives the
same cases through ``up`` and ``config`` against the real engine.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.compose.cli import ComposeCli, ComposeOutput
from gateway.config import load_settings
from gateway.errors import ComposeFailed, ConfigError, PolicyRefused
from gateway.policy.guard import PolicyGuard, refusal
from gateway.policy.rules import Policy, StackRules
from gateway.stacks import Stack, find_stack
from tests.conftest import StackFactory
from tests.gateway.policy_cases import HOSTILE, ORDINARY, OUTSIDE_MARKER, ordinary_files

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


@pytest.fixture(scope="session")
def cli() -> ComposeCli:
    return ComposeCli.locate(None, os.environ)


class CountingCli(ComposeCli):
    """The real CLI, counting its runs: to see when the guard ran Compose and when it did not."""

    def __init__(self, cli: ComposeCli) -> None:
        super().__init__(cli.argv, cli.version, cli.env)
        self.runs: list[list[str]] = []

    async def run(self, project: str, args: Sequence[str], **options: Any) -> ComposeOutput:
        self.runs.append(list(args))
        return await super().run(project, args, **options)


def make(stacks: StackFactory, compose: str, outside: Path, files: dict[str, str] | None = None) -> Stack:
    name = stacks.make(compose.replace("{outside}", str(outside)), files=files)
    stack = find_stack(stacks.root, name)
    assert stack is not None
    return stack


@pytest.mark.parametrize(("compose", "files", "rules"), [case[1:] for case in HOSTILE], ids=[c[0] for c in HOSTILE])
async def test_each_hostile_compose_file_is_refused_with_its_rule_id(
    stacks: StackFactory, outside: Path, cli: ComposeCli, compose: str, files: dict[str, str], rules: set[str]
) -> None:
    stack = make(stacks, compose, outside, files)
    evaluation = await PolicyGuard(Policy()).evaluate(stack, cli)
    assert not evaluation.verdict.allowed
    assert rules <= set(evaluation.verdict.rules), evaluation.verdict
    text = str(refusal(stack.name, "up", evaluation.verdict))
    for rule in rules:
        assert f"\n- {rule}: " in text
    assert f"policy.stacks.{stack.name}.allow" in text
    assert OUTSIDE_MARKER not in text


async def test_an_ordinary_stack_is_allowed(stacks: StackFactory, outside: Path, cli: ComposeCli) -> None:
    stack = make(stacks, ORDINARY, outside, ordinary_files(stacks.image))
    evaluation = await PolicyGuard(Policy()).evaluate(stack, cli)
    assert evaluation.verdict.allowed, evaluation.verdict
    assert set(evaluation.model["services"]) == {"web", "api", "worker", "extra"}


async def test_an_operator_exception_allows_exactly_that_rule_for_exactly_that_stack(
    stacks: StackFactory, outside: Path, cli: ComposeCli
) -> None:
    compose = "services:\n  a:\n    image: {image}\n    privileged: true\n    cap_add: [NET_ADMIN]\n"
    excepted = make(stacks, compose, outside)
    other = make(stacks, compose, outside)
    guard = PolicyGuard(Policy(stacks={excepted.name: StackRules(allow=("privileged",))}))

    mine = (await guard.evaluate(excepted, cli)).verdict
    assert mine.rules == ["capabilities"]
    theirs = (await guard.evaluate(other, cli)).verdict
    assert set(theirs.rules) == {"privileged", "capabilities"}


async def test_allowed_bind_roots_allow_binds_below_them_but_never_the_socket(
    stacks: StackFactory, outside: Path, cli: ComposeCli
) -> None:
    stack = make(
        stacks,
        "services:\n  a:\n    image: {image}\n    volumes: ['{outside}:/data', '{outside}/../elsewhere:/e']\n",
        outside,
    )
    guard = PolicyGuard(Policy(allowed_bind_roots=(outside,)))
    result = (await guard.evaluate(stack, cli)).verdict
    assert [v.value for v in result.violations] == [
        f"bind mount {outside}/../elsewhere (resolves to {outside.parent}/elsewhere) is outside the stack folder"
    ]

    socket = make(stacks, "services:\n  a:\n    image: {image}\n    volumes: ['/run:/r']\n", outside)
    root_guard = PolicyGuard(Policy(allowed_bind_roots=(Path("/run"),)), sockets=["/run/docker.sock"])
    assert (await root_guard.evaluate(socket, cli)).verdict.rules == ["docker_socket"]


async def test_a_reference_outside_the_folder_is_refused_before_compose_reads_it(
    stacks: StackFactory, outside: Path, cli: ComposeCli
) -> None:
    # Not YAML: had Compose read it, its parse error would quote the marker.
    (outside / "other.yaml").write_text(f"{OUTSIDE_MARKER}: [unclosed\n")
    stack = make(stacks, "include:\n  - {outside}/other.yaml\nservices: {}\n", outside)
    counting = CountingCli(cli)
    evaluation = await PolicyGuard(Policy()).evaluate(stack, counting)
    assert evaluation.verdict.rules == ["outside_files"] and evaluation.model == {}
    assert counting.runs == []
    assert OUTSIDE_MARKER not in json.dumps(evaluation.verdict.model_dump())


async def test_symlinks_are_judged_by_where_they_point(stacks: StackFactory, outside: Path, cli: ComposeCli) -> None:
    stack = make(
        stacks,
        "services:\n  a:\n    image: {image}\n    env_file: app.env\n    volumes: ['./data:/data']\n",
        outside,
    )
    assert stack.folder is not None
    (stack.folder / "data").symlink_to("/")
    (stack.folder / "app.env").symlink_to(outside / "secret.env")
    (stack.folder / ".env").symlink_to(outside / "secret.env")
    evaluation = await PolicyGuard(Policy()).evaluate(stack, cli)
    values = [v.value for v in evaluation.verdict.violations]
    assert any(v.startswith("env_file app.env") for v in values)
    assert any(v.startswith(".env file .env") for v in values)
    # Compose never ran (it would have read both files), so the bind is judged once they are fixed.
    (stack.folder / "app.env").unlink()
    (stack.folder / ".env").unlink()
    (stack.folder / "app.env").write_text("MODE=1\n")
    evaluation = await PolicyGuard(Policy()).evaluate(stack, cli)
    assert set(evaluation.verdict.rules) == {"host_bind", "docker_socket"}


async def test_marks_are_cached_until_a_file_that_shapes_the_model_changes(
    stacks: StackFactory, outside: Path, cli: ComposeCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.policy.guard

    monkeypatch.setattr(gateway.policy.guard, "MARK_TTL_S", 0.0)
    stack = make(stacks, "include: [inner.yaml]\nservices: {}\n", outside, {"inner.yaml": "services: {}\n"})
    assert stack.folder is not None
    counting = CountingCli(cli)
    guard = PolicyGuard(Policy())
    assert (await guard.mark(stack, counting)).allowed
    assert (await guard.mark(stack, counting)).allowed
    assert len(counting.runs) == 1
    # An included file changed: the mark is recomputed, and now refuses.
    (stack.folder / "inner.yaml").write_text("services:\n  a:\n    image: busybox\n    privileged: true\n")
    assert (await guard.mark(stack, counting)).rules == ["privileged"]
    assert len(counting.runs) == 2


async def test_up_reuses_an_allowed_verdict_only_while_nothing_it_depended_on_changed(
    stacks: StackFactory, outside: Path, cli: ComposeCli
) -> None:
    stack = make(
        stacks,
        "include: [inner.yaml]\nservices:\n  a:\n    image: {image}\n    volumes: ['./data:/data']\n",
        outside,
        {"inner.yaml": "services: {}\n", "data/keep": ""},
    )
    assert stack.folder is not None
    counting = CountingCli(cli)
    guard = PolicyGuard(Policy())
    await guard.enforce(stack, counting, "up")
    await guard.enforce(stack, counting, "up")
    assert len(counting.runs) == 1

    # A bind source swapped for a symlink changes no compose file, and is caught all the same.
    shutil.rmtree(stack.folder / "data")
    (stack.folder / "data").symlink_to("/")
    with pytest.raises(PolicyRefused) as caught:
        await guard.enforce(stack, counting, "up")
    assert {v.rule for v in caught.value.violations} == {"host_bind", "docker_socket"}
    (stack.folder / "data").unlink()
    (stack.folder / "data").mkdir()
    await guard.enforce(stack, counting, "up")
    runs = len(counting.runs)

    # Same size, mtime set back: the inode's ctime still moves, so the change is seen.
    inner = stack.folder / "inner.yaml"
    before = inner.stat()
    inner.write_text("services: []\n")
    os.utime(inner, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(ComposeFailed):
        await guard.enforce(stack, counting, "up")
    assert len(counting.runs) == runs + 1

    # A new .env changes interpolation: judged afresh.
    inner.write_text("services: {}\n")
    await guard.enforce(stack, counting, "up")
    runs = len(counting.runs)
    (stack.folder / ".env").write_text("X=1\n")
    await guard.enforce(stack, counting, "up")
    assert len(counting.runs) == runs + 1


async def test_a_mark_on_a_broken_stack_says_why_instead_of_raising(
    stacks: StackFactory, outside: Path, cli: ComposeCli
) -> None:
    stack = make(stacks, "services:\n  a: [unclosed\n", outside)
    mark = await PolicyGuard(Policy()).mark(stack, cli)
    assert not mark.allowed and mark.error and "yaml" in mark.error
    # A file that names other files is parsed by the guard itself, before Compose may follow them.
    stack = make(stacks, "include: [a.yaml]\nservices:\n  a: [unclosed\n", outside)
    mark = await PolicyGuard(Policy()).mark(stack, cli)
    assert not mark.allowed and mark.error and "is not valid YAML (read before Compose runs)" in mark.error


async def test_a_refusal_is_a_policy_violation_that_lists_every_finding(
    stacks: StackFactory, outside: Path, cli: ComposeCli
) -> None:
    stack = make(stacks, "services:\n  web:\n    image: {image}\n    privileged: true\n", outside)
    with pytest.raises(PolicyRefused) as caught:
        await PolicyGuard(Policy()).enforce(stack, cli, "up")
    assert caught.value.kind == "policy_violation"
    assert [(v.rule, v.service, v.value) for v in caught.value.violations] == [
        ("privileged", "web", "privileged: true")
    ]
    assert f'"privileged" in policy.stacks.{stack.name}.allow' in str(caught.value)


def test_the_operator_policy_is_read_from_config_json_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    policy: dict[str, Any] = {
        "allowed_bind_roots": ["/srv/media/"],
        "stacks": {"shop": {"allow": ["privileged"]}},
        "confirm": ["down"],
        "pass_env": ["TZ"],
    }
    path.write_text(json.dumps({"policy": policy}))
    settings = load_settings({"CONFIG_PATH": str(path)})
    assert settings.policy.allowed_bind_roots == (Path("/srv/media"),)
    assert settings.policy.allows("shop", "privileged") and not settings.policy.allows("shop", "host_bind")
    assert not settings.policy.allows("other", "privileged")

    bad = {"stacks": {"shop": {"allow": ["everything"]}}, "pass_env": ["VAULT_TOKEN"], "allowed_bind_roots": ["/"]}
    path.write_text(json.dumps({"policy": bad}))
    with pytest.raises(ConfigError) as caught:
        load_settings({"CONFIG_PATH": str(path)})
    message = str(caught.value)
    assert "policy.stacks.shop.allow" in message and "unknown rule id(s) everything" in message
    assert "pass_env may not hold VAULT_TOKEN" in message and "allowed bind root '/'" in message
