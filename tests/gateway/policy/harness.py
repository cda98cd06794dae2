"""Shared by the policy tests that drive the real Compose: the hostile corpus on disk, a Compose CLI
that counts its runs, and one call that takes a stack through the reader, Compose and the judge."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.compose.cli import ComposeCli, ComposeOutput
from gateway.policy.findings import OwnerLookup
from gateway.policy.guard import PolicyGuard
from gateway.policy.reader import ReadRefused, Unloadable
from gateway.policy.rules import Policy
from gateway.stacks import Stack, find_stack
from tests.conftest import random_name

__all__ = ["CORPUS", "CountingCli", "Outcome", "cases", "judged", "materialise"]

CORPUS = Path(__file__).resolve().parent / "hostile"


def cases() -> list[dict[str, Any]]:
    """The hostile corpus's manifest: one entry per case folder."""
    manifest: dict[str, list[dict[str, Any]]] = json.loads((CORPUS / "manifest.json").read_text())
    return manifest["cases"]


class CountingCli(ComposeCli):
    """The real CLI, counting its runs: to see when the guard ran Compose and when it did not."""

    def __init__(self, cli: ComposeCli) -> None:
        super().__init__(cli.argv, cli.version, cli.env)
        self.runs: list[list[str]] = []

    async def run(self, project: str, args: Sequence[str], **options: Any) -> ComposeOutput:
        self.runs.append(list(args))
        return await super().run(project, args, **options)


def _fill(text: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return text


def materialise(case: dict[str, Any], root: Path, outside: Path, image: str) -> tuple[Stack, OwnerLookup]:
    """Write one corpus case as a stack under ``root``; its engine owners as a lookup."""
    name = random_name("h")
    values = {"outside": str(outside), "image": image, "stack": name}
    folder = root / name
    shutil.copytree(CORPUS / case["id"], folder)
    for path in folder.rglob("*"):
        if path.is_file():
            path.write_text(_fill(path.read_text(), values))
    for rel, target in (case.get("symlinks") or {}).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).symlink_to(_fill(target, values))
    for rel, spec in (case.get("generated") or {}).items():
        if spec["kind"] == "filler":
            line = "# " + "x" * 78 + "\n"
            (folder / rel).write_text(line * (spec["bytes"] // len(line) + 1))
        elif spec["kind"] == "nul":
            (folder / rel).write_bytes(b"A=before\0after\n")
    for rel in case.get("fifos") or []:
        os.mkfifo(folder / rel)
    for neighbour in case.get("neighbours") or []:
        other = root / _fill(neighbour, values)
        other.mkdir()
        (other / "compose.yaml").write_text("services: {}\n")
    owners = {_fill(key, values): project for key, project in (case.get("owners") or {}).items()}
    stack = find_stack(root, name)
    assert stack is not None
    return stack, lambda kind, resource: owners.get(f"{kind}:{resource}")


@dataclass
class Outcome:
    allowed: bool
    ids: set[str]  # rule ids, or the reader's / judge's error code
    text: str  # everything the caller would be shown


async def judged(stack: Stack, cli: ComposeCli, guard: PolicyGuard | None = None) -> Outcome:
    """The guard's answer on ``stack``, as ``up`` and ``plan`` get it: refused ids and the text shown."""
    guard = guard or PolicyGuard(Policy())
    try:
        evaluation = await guard.evaluate(stack, cli)
    except (ReadRefused, Unloadable) as exc:
        return Outcome(False, {exc.code}, str(exc))
    verdict = evaluation.verdict
    ids = set(verdict.rules) | ({evaluation.error_code} if evaluation.error_code else set())
    return Outcome(verdict.allowed, ids, json.dumps(verdict.model_dump()))
