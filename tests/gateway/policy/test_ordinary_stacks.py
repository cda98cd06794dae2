"""Ordinary stacks keep working: every compose file the rest of the suite writes is judged by the new
guard exactly as the old one judged it.

The compose files are found as string literals in ``tests/`` (any text with a ``services:`` mapping),
plus the stacks the suite builds from pieces. Each goes through the reader, the real Compose and the
judge. A file Compose itself rejects is some test's invalid input and is left out; every other one
must be refused by no rule that issue 20 added, and the ordinary ones must be allowed outright.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import yaml

from gateway.compose.cli import ComposeCli
from gateway.errors import ComposeFailed
from gateway.policy.guard import PolicyGuard
from gateway.policy.rules import Policy
from gateway.stacks import find_stack
from tests.conftest import NEVER_HEALTHY, STACK_FILES, WEB_WORKER, StackFactory
from tests.gateway.policy_cases import ORDINARY, ordinary_files
from tests.gateway.test_policy_engine import LEAKY

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

TESTS = Path(__file__).resolve().parents[2]
# The rules of issue 11: a stack the suite writes may break these on purpose (its hostile cases).
ISSUE_11_RULES = frozenset(
    {"privileged", "capabilities", "host_namespaces", "devices", "security_opt", "host_bind", "docker_socket",
     "volumes_from", "outside_files", "provider", "external_volumes", "external_networks", "volume_drivers",
     "host_resources"}
)  # fmt: skip
# Built from pieces, with the files beside them: these must be allowed outright.
ORDINARY_STACKS = {
    "WEB_WORKER": (WEB_WORKER, STACK_FILES),
    "NEVER_HEALTHY": (NEVER_HEALTHY, {}),
    "LEAKY": (LEAKY, {".env": "LOCAL_VALUE=stack-own\n"}),
    "ORDINARY": (ORDINARY, ordinary_files("{image}")),
}


def literals() -> dict[str, str]:
    """Every compose file written as one string literal in the suite, by where it is."""
    found: dict[str, str] = {}
    for path in sorted(TESTS.rglob("*.py")):
        if "policy" in path.relative_to(TESTS).parts[:2]:
            continue  # the policy tests' own hostile stacks
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str) and "services:" in node.value):
                continue
            try:
                doc = yaml.safe_load(node.value.replace("{image}", "busybox").replace("{{", "{").replace("}}", "}"))
            except yaml.YAMLError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("services"), dict) and "{outside}" not in node.value:
                found.setdefault(node.value, f"{path.relative_to(TESTS)}:{node.lineno}")
    return {where: text for text, where in found.items()}


LITERALS = literals()


@pytest.fixture(scope="module")
def cli() -> ComposeCli:
    return ComposeCli.locate(None, os.environ)


def test_the_suite_writes_enough_compose_files_to_be_worth_judging() -> None:
    assert len(LITERALS) >= 30


@pytest.mark.parametrize("where", sorted(LITERALS))
async def test_no_compose_file_of_the_suite_is_refused_by_a_rule_issue_20_added(
    where: str, stacks: StackFactory, cli: ComposeCli
) -> None:
    text = LITERALS[where].replace("{{", "{").replace("}}", "}")
    name = stacks.make(text)
    stack = find_stack(stacks.root, name)
    assert stack is not None
    try:
        evaluation = await PolicyGuard(Policy()).evaluate(stack, cli)
    except ComposeFailed:
        return  # Compose rejects it: a test's deliberately invalid input
    assert evaluation.verdict.error is None, evaluation.verdict
    assert set(evaluation.verdict.rules) <= ISSUE_11_RULES, (where, evaluation.verdict)


@pytest.mark.parametrize("stack_name", sorted(ORDINARY_STACKS))
async def test_the_suites_ordinary_stacks_are_allowed(stack_name: str, stacks: StackFactory, cli: ComposeCli) -> None:
    compose, files = ORDINARY_STACKS[stack_name]
    name = stacks.make(compose, files={rel: text.replace("{image}", stacks.image) for rel, text in files.items()})
    stack = find_stack(stacks.root, name)
    assert stack is not None
    evaluation = await PolicyGuard(Policy()).evaluate(stack, cli)
    assert evaluation.verdict.allowed, evaluation.verdict
