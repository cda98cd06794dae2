"""The hostile corpus: every case is refused by the reader or the judge with the ids its manifest names.

Each folder under ``hostile/`` is a stack (``{outside}``, ``{image}`` and ``{stack}`` are filled in
when it is written); ``hostile/manifest.json`` says why it is hostile and what must refuse it. The
cases run through the reader, the real ``docker compose config`` and the judge, exactly as ``up``
and ``plan`` judge a stack. Phase 2 of issue 20 drives the same corpus through every tool and token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from gateway.compose.cli import ComposeCli
from gateway.policy.guard import PolicyGuard
from gateway.policy.rules import RULES, Policy
from tests.conftest import StackFactory
from tests.gateway.policy.harness import CORPUS, CountingCli, cases, judged, materialise
from tests.gateway.policy_cases import OUTSIDE_MARKER

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

CASES = cases()
# What the reader and the judge refuse with when a stack cannot be judged at all (no operator can allow these).
ERROR_CODES = frozenset(
    {
        "yaml_tag",
        "yaml_directive",
        "yaml_key",
        "yaml_anchor",
        "yaml_budget",
        "duplicate_key",
        "invalid_yaml",
        "invalid_reference",
        "control_characters",
        "unreadable_file",
        "missing_file",
        "dotenv_profiles",
    }
)
# The classes of issue 20, each of which the corpus must cover.
CLASSES = frozenset(
    {"yaml", "unknown_key", "socket", "provider", "hooks", "build", "registry", "logging", "network", "names",
     "labels", "files", "dos", "control", "env"}
)  # fmt: skip


@pytest.fixture(scope="module")
def cli() -> ComposeCli:
    return ComposeCli.locate(None, os.environ)


def test_the_manifest_and_the_case_folders_agree() -> None:
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids)) >= 60
    folders = {path.name for path in CORPUS.iterdir() if path.is_dir()}
    assert folders == set(ids)
    assert {case["class"] for case in CASES} == CLASSES
    for case in CASES:
        assert (CORPUS / case["id"] / "compose.yaml").is_file(), case["id"]
        assert case["refused"] and set(case["refused"]) <= set(RULES) | ERROR_CODES, case["id"]
        assert case["why"], case["id"]


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
async def test_each_hostile_case_is_refused_with_the_ids_its_manifest_names(
    case: dict[str, Any], stacks: StackFactory, outside: Path, cli: ComposeCli
) -> None:
    stack, owners = materialise(case, stacks.root, outside, stacks.image)
    counting = CountingCli(cli)
    outcome = await judged(stack, counting, PolicyGuard(Policy(), owners=owners))
    assert not outcome.allowed
    assert set(case["refused"]) <= outcome.ids, (case["why"], outcome)
    assert OUTSIDE_MARKER not in outcome.text
    if case.get("before_compose"):
        # Compose reads these while loading: it must not have run at all.
        assert counting.runs == [], counting.runs
    # Nothing ran: a provider would write PWNED, a hook or a healthcheck RAN.
    assert stack.folder is not None
    assert not (stack.folder / "PWNED").exists() and not (stack.folder / "RAN").exists()
