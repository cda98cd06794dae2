"""A stack that cannot be judged fails alone: its mark says why, and every other caller and stack
carries on (issue 20: a NUL byte in one folder took ``list_stacks`` down for everyone)."""

from __future__ import annotations

import os
from typing import Any

import anyio
import pytest

import gateway.policy.allowlist
from gateway.errors import PolicyViolation
from gateway.models import Verdict
from gateway.operations import ComposeOperations
from gateway.policy.findings import At, Findings
from tests.conftest import StackFactory

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

BOMB = "x-a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"x-a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 9)
)
SERVICE = "services:\n  a:\n    image: {image}\n"


async def marks(ops: ComposeOperations, names: list[str]) -> dict[str, Verdict]:
    with anyio.fail_after(60):
        while True:
            listed = {entry.name: entry.policy for entry in (await ops.list_stacks()).stacks}
            if all(listed.get(name) is not None for name in names):
                return {name: mark for name, mark in listed.items() if mark is not None}


async def test_stacks_that_cannot_be_judged_get_error_marks_and_the_listing_goes_on(
    ops: ComposeOperations, stacks: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crashing_labels(f: Findings, at: At, value: Any) -> None:
        if "crash.me" in str(value):
            raise ZeroDivisionError("a bug in a check")

    key = gateway.policy.allowlist.TABLE["services.*.labels"]
    monkeypatch.setitem(gateway.policy.allowlist.TABLE, "services.*.labels", key.__class__(
        mapping=key.mapping, sequence=key.sequence, scalar=key.scalar, check=crashing_labels
    ))  # fmt: skip
    fine = stacks.make(SERVICE + "    labels: {ok: x}\n")
    broken = {
        "bomb": stacks.make(BOMB + SERVICE),
        "nul": stacks.make(SERVICE + '    volumes: ["./a\\0b:/x"]\n'),
        "fifo": stacks.make(SERVICE + "    env_file: app.env\n"),
        "crash": stacks.make(SERVICE + "    labels: {crash.me: x}\n"),
        "yaml": stacks.make("services:\n  a: [unclosed\n"),
    }
    (stacks.root / broken["fifo"] / "app.env").unlink(missing_ok=True)
    os.mkfifo(stacks.root / broken["fifo"] / "app.env")
    found = await marks(ops, [fine, *broken.values()])
    assert found[fine].allowed
    for what, name in broken.items():
        mark = found[name]
        assert not mark.allowed and mark.error, (what, mark)
    assert "alias bomb" in (found[broken["bomb"]].error or "")
    assert "NUL" in (found[broken["nul"]].error or "")
    assert "not a regular file" in (found[broken["fifo"]].error or "")
    assert "could not judge this stack (ZeroDivisionError)" in (found[broken["crash"]].error or "")
    # ps carries the mark; config refuses with the reason; neither is an internal error.
    ps = await ops.ps(broken["bomb"])
    assert ps.policy is not None and not ps.policy.allowed
    with pytest.raises(PolicyViolation, match="alias bomb"):
        await ops.config(broken["bomb"])
    with pytest.raises(PolicyViolation, match="could not judge"):
        await ops.up(broken["crash"])


async def test_a_stack_whose_view_fails_unexpectedly_is_marked_and_every_other_read_goes_on(
    ops: ComposeOperations, stacks: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    fine = stacks.make(SERVICE + "    command: ['sleep', '3600']\n")
    broken = stacks.make(SERVICE)
    real = ops.catalog.view

    async def view(stack: Any) -> Any:
        if stack.name == broken:
            raise RuntimeError("a bug on the catalog's side")
        return await real(stack)

    monkeypatch.setattr(ops.catalog, "view", view)
    found = await marks(ops, [fine, broken])
    assert found[fine].allowed
    assert not found[broken].allowed and "RuntimeError" in (found[broken].error or "")
    assert (await ops.ps(fine)).policy is not None
