"""The audit's disk: a refusal storm does not fill it, and mutations keep their reserve.

The summarising is tested as a unit on a fake clock; the disk as a real small file system (a tmpfs
mounted for the test), written by the real audit log, the real operations with a real stack, and a
real `compose-agent serve` taking a storm of refused calls over MCP.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.audit import AuditLog
from gateway.audit.digest import OTHER, RefusalDigest
from gateway.config import load_settings
from gateway.errors import AuditUnavailable
from gateway.metrics import ControlPlane
from gateway.operations import ComposeOperations
from tests.conftest import WEB_WORKER, StackFactory
from tests.gateway.conftest import start_gateway, stop_process

MIB = 1024 * 1024


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB file system of its own (tmpfs), so that filling it fills nothing else."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.fail(f"these tests mount a small tmpfs and need root (or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` until only ``leave`` bytes are free; returns the filler file (delete it to free the space)."""
    filler = disk / "filler"
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    with filler.open("ab") as handle:
        handle.write(b"\0" * max(0, free - leave))
    return filler


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def refuse(audit: AuditLog, reason: str, tool: str = "up", caller: str = "status_panel") -> bool:
    return audit.write(
        caller=caller,
        control_plane="compose_agent",
        tool=tool,
        arguments={"project": "shop"},
        outcome="refused",
        duration_ms=0.0,
        error=reason,
    )


# -- the digest -------------------------------------------------------------------------------------


def test_the_first_refusal_of_a_key_is_written_and_its_repeats_become_one_count_an_interval() -> None:
    clock = FakeClock()
    digest = RefusalDigest(interval=60, max_keys=3, clock=clock, wall=clock)
    key = ("status_panel", "compose_agent", "up", "not allowed", None, None)
    assert digest.admit(key)
    assert [digest.admit(key) for _ in range(99)] == [False] * 99
    assert digest.due() == []
    clock.now += 60
    [summary] = digest.due()
    assert summary.key == key and summary.count == 99
    assert digest.admit(key)  # a new interval: written in full again


def test_past_its_room_for_keys_an_interval_counts_each_callers_other_refusals_under_one_key() -> None:
    clock = FakeClock()
    digest = RefusalDigest(interval=60, max_keys=3, clock=clock, wall=clock)
    written = [digest.admit(("agent", "compose_agent", "up", f"no stack 's{n}'", None, None)) for n in range(1000)]
    assert written.count(True) == 3
    summaries = {s.key: s.count for s in digest.flush()}
    assert summaries == {("agent", "compose_agent", "up", OTHER, None, None): 997}


def test_a_refusal_storm_leaves_a_line_per_key_and_a_summary_and_varied_reasons_buy_nothing(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log", reserve=0)
    for n in range(20_000):
        assert refuse(audit, "the token of 'status_panel' may not call 'deploy'", tool="deploy")
        assert refuse(audit, f"stack 'x{n}' not found")  # an attacker varying the reason
    audit.close()
    written = lines(tmp_path / "audit.log")
    assert len(written) < 250
    summaries = [line for line in written if line["phase"] == "summary"]
    deploy = [s for s in summaries if s["tool"] == "deploy"]
    assert len(deploy) == 1 and deploy[0]["count"] == 19_999 and deploy[0]["caller"] == "status_panel"
    assert sum(int(s["count"]) for s in summaries) + sum(1 for line in written if line["phase"] == "outcome") == 40_000


# -- a small disk -----------------------------------------------------------------------------------


def test_below_the_reserve_refusals_are_counted_not_written_and_intents_still_are(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditLog(small_disk / "audit.log", reserve=1 * MIB)
    # Room for a few dozen lines above the reserve: the first refusals take it.
    filler = fill(small_disk, leave=MIB + 8 * 1024)
    with caplog.at_level(logging.WARNING, logger="gateway.audit"):
        for n in range(5_000):
            refuse(audit, f"refused for reason {n}")
        intent = audit.intent(caller="agent", control_plane="compose_agent", tool="up", arguments={"project": "shop"})
        assert audit.outcome(intent, outcome="ok")
    low = [r for r in caplog.records if "audit log's disk is low" in r.getMessage()]
    assert len(low) == 1, "said once an interval, not once a line"
    assert audit.space.low
    written = lines(small_disk / "audit.log")
    assert [line["phase"] for line in written if line.get("tool") == "up" and line["caller"] == "agent"] == [
        "intent",
        "outcome",
    ]
    # The disk kept its reserve: refusals stopped before it, and only the intent and outcome went in.
    assert os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize > MIB - 4096
    filler.unlink()
    audit.close()


def test_a_mutation_whose_intent_cannot_be_written_does_not_run(
    small_disk: Path, stacks: StackFactory, tmp_path: Path
) -> None:
    audit = AuditLog(small_disk / "audit.log", reserve=0)
    settings = load_settings(
        {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}, stacks_dir=stacks.root
    )
    ops = ComposeOperations.from_settings(
        settings, plane=ControlPlane.COMPOSE_AGENT, audit=audit, environ=dict(os.environ)
    )
    name = stacks.make(WEB_WORKER, files={"site/index.html": "x\n"})
    fill(small_disk, leave=0)
    try:
        with pytest.raises(AuditUnavailable):
            anyio.run(ops.up, name)
        assert ops.engine.project_containers(name) == []
    finally:
        ops.close()
        audit.close()


# -- a storm through a real gateway -----------------------------------------------------------------


@pytest.mark.anyio
async def test_a_refusal_storm_over_mcp_leaves_the_audit_a_few_lines(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    gw = start_gateway(tmp_path, stacks, "--token-rate", "10000", "--token-burst", "10000")
    try:
        async with httpx2.AsyncClient(headers=gw.headers(gw.panel_token), timeout=30) as http:
            async with Client(streamable_http_client(gw.url, http_client=http)) as client:
                for _ in range(300):
                    # The panel's token may not deploy: each call is refused, and audited.
                    result = await client.call_tool("deploy", {"project": "shop", "compose_yaml": "services: {}\n"})
                    assert result.is_error
    finally:
        stop_process(gw.process)  # a clean stop writes the summaries of the interval
    written = lines(gw.audit)
    refusals = [line for line in written if line.get("tool") == "deploy"]
    assert [line["phase"] for line in refusals] == ["outcome", "summary"]
    assert refusals[1]["count"] == 299 and refusals[1]["caller"] == "status_panel_token"
