"""The audit is written ahead, survives rotation, refuses what it cannot record, and heals after a crash.

The file mechanics are tested on real files; the guarantees end to end on real gateway processes
with real Compose, killed with real signals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditLog, AuditUnavailable, bounded_arguments

pytestmark = pytest.mark.anyio


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_an_intent_line_is_on_disk_before_the_call_and_its_outcome_follows_under_its_id(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    intent = log.intent(
        caller="status_panel_token",
        control_plane="compose_agent",
        tool="up",
        arguments={"project": "shop"},
        on_behalf_of="alice",
    )
    (announced,) = records(log.path)
    assert announced["phase"] == "intent" and announced["id"] == intent.id and announced["pid"] == os.getpid()
    assert announced["on_behalf_of"] == "alice" and "outcome" not in announced
    assert log.outcome(intent, outcome="ok")
    outcome = records(log.path)[1]
    assert (outcome["phase"], outcome["id"], outcome["outcome"], outcome["tool"]) == ("outcome", intent.id, "ok", "up")
    assert outcome["on_behalf_of"] == "alice" and outcome["duration_ms"] >= 0
    assert oct(log.path.stat().st_mode & 0o777) == "0o600"
    log.close()


def test_a_rotated_or_deleted_log_is_reopened_by_path(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.write(caller="c", control_plane="compose_agent", tool="up", arguments={}, outcome="refused", duration_ms=0)
    path.rename(tmp_path / "audit.log.1")  # logrotate's default: move, then the writer reopens
    log.write(caller="c", control_plane="compose_agent", tool="down", arguments={}, outcome="refused", duration_ms=0)
    assert [r["tool"] for r in records(path)] == ["down"]
    assert [r["tool"] for r in records(tmp_path / "audit.log.1")] == ["up"]
    path.unlink()
    log.intent(caller="c", control_plane="compose_agent", tool="stop", arguments={})
    assert [r["tool"] for r in records(path)] == ["stop"]
    log.close()


def test_an_intent_that_cannot_be_written_raises_a_clear_error(tmp_path: Path) -> None:
    log = AuditLog(Path("/dev/full"))
    with pytest.raises(AuditUnavailable, match="cannot be written .*No space left"):
        log.intent(caller="c", control_plane="compose_agent", tool="up", arguments={"project": "p"})
    # A refusal line that cannot be written is logged, not raised: the call is refused anyway.
    assert not log.write(caller="c", control_plane="p", tool="up", arguments={}, outcome="refused", duration_ms=0)
    assert log.recover() == 0  # a device is never read back
    log.close()


def test_recovery_resolves_intents_of_dead_processes_only_and_only_once(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    crashed, finished, live = (
        {"time": "t", "id": ident, "phase": "intent", "pid": pid, "caller": "c", "control_plane": "compose_agent"}
        | {"tool": "up", "arguments": {"project": ident}}
        for ident, pid in (("crashed", dead_pid()), ("finished", dead_pid()), ("live", os.getppid()))
    )
    lines = [crashed, finished, {"id": "finished", "phase": "outcome", "outcome": "ok"}, live]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"torn": tr')
    log = AuditLog(path)
    assert log.recover() == 1
    resolved = records_after_torn_line(path)[-1]
    assert (resolved["id"], resolved["phase"], resolved["outcome"], resolved["recovered"]) == (
        "crashed",
        "outcome",
        "unknown",
        True,
    )
    assert resolved["tool"] == "up" and resolved["arguments"] == {"project": "crashed"}
    assert "stopped before this call finished" in resolved["error"]
    assert log.recover() == 0
    log.close()


def records_after_torn_line(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def test_arguments_of_any_size_leave_a_bounded_line() -> None:
    shown = bounded_arguments({"project": "x" * 5000, "services": [f"s{n}" for n in range(1000)], "deep": {"a": [[1]]}})
    assert len(shown["project"]) < 250 and shown["project"].endswith("(5000 chars)")
    assert len(shown["services"]) == 21 and shown["services"][-1] == "...(1000 items)"
    assert len(json.dumps(shown)) < 1000


def test_an_unwritable_audit_path_at_start_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    folder = tmp_path / "audit.log"
    folder.mkdir()  # a folder where the file should be
    env = {**os.environ, "AUDIT_LOG": str(folder), "COMPOSE_AGENT_STATE_DIR": str(tmp_path / "s")}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--stacks-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "audit" in line]
    assert errors == [
        f"compose-agent: error: cannot open the audit log {folder}: Is a directory; "
        "point AUDIT_LOG at a file this user can write"
    ]
    assert "Traceback" not in done.stderr
