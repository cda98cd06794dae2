"""The stores behind tasks and idempotency keys: what they keep on disk, for whom, and after a crash."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.errors import StateUnavailable
from gateway.idempotency import KEY_TTL_S, KeyLedger, fingerprint, valid_key
from gateway.statefiles import RecordFolder, owned_by_live_process, process_started
from gateway.tasks import MAX_TTL_MS, MIN_TTL_MS, TaskStore


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_record_is_written_whole_private_and_read_back(tmp_path: Path) -> None:
    folder = RecordFolder(tmp_path / "records")
    folder.write("abc_1", {"n": 1, "text": "é"})
    folder.write("abc_1", {"n": 2})
    assert stat.S_IMODE((tmp_path / "records").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "records" / "abc_1.json").stat().st_mode) == 0o600
    assert list(folder.load()) == [("abc_1", {"n": 2})]
    assert not [p for p in (tmp_path / "records").iterdir() if p.name.startswith(".")]


def test_unreadable_or_foreign_files_are_skipped_and_leftover_temporaries_removed(tmp_path: Path) -> None:
    root = tmp_path / "records"
    folder = RecordFolder(root)
    folder.write("good", {"ok": True})
    (root / "torn.json").write_text('{"half": ')
    (root / "list.json").write_text("[1, 2]")
    (root / "notes.txt").write_text("not ours")
    (root / ".good-123.tmp").write_text("a write a crash cut short")
    assert list(folder.load()) == [("good", {"ok": True})]
    assert not (root / ".good-123.tmp").exists()


def test_record_names_are_ours_never_a_path(tmp_path: Path) -> None:
    folder = RecordFolder(tmp_path / "records")
    for name in ("../escape", "a/b", "", "x" * 200, "dot.json"):
        with pytest.raises(ValueError):
            folder.write(name, {})


def test_an_unwritable_state_folder_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(StateUnavailable, match="COMPOSE_AGENT_STATE_DIR"):
        RecordFolder(blocker / "tasks").write("a", {})


def test_a_live_process_is_told_from_a_dead_one_and_our_own_pid_counts_as_gone() -> None:
    assert not owned_by_live_process(os.getpid())
    assert not owned_by_live_process(_dead_pid())
    assert owned_by_live_process(os.getppid())
    assert owned_by_live_process(os.getppid(), process_started(os.getppid()))
    assert not owned_by_live_process("12")


def test_a_process_that_got_a_dead_gateway_s_pid_is_not_that_gateway(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks")
    task = store.create("o", "up", "shop")
    task.pid, task.pid_started = os.getppid(), "1"  # alive, but started at another time than the record says
    store.save(task)
    reopened = TaskStore(tmp_path / "tasks")
    reopened.open()
    assert reopened.get("o", task.task_id).state == "interrupted"  # type: ignore[union-attr]


# -- tasks ------------------------------------------------------------------------------------------


def test_a_task_belongs_to_its_owner_alone(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks")
    task = store.create("compose_agent_token", "up", "shop")
    store.save(task)
    assert store.get("compose_agent_token", task.task_id) is task
    assert store.get("status_panel_token", task.task_id) is None
    assert store.get("person:alice", task.task_id) is None
    assert store.page("status_panel_token", None) == ([], None)
    assert len(task.task_id) >= 24  # unguessable: 18 random bytes


def test_ttl_is_clamped_between_a_minute_and_a_day(tmp_path: Path) -> None:
    store = TaskStore(None)
    assert store.create("o", "up", "s", ttl_ms=5).ttl_ms == MIN_TTL_MS
    assert store.create("o", "up", "s", ttl_ms=10**12).ttl_ms == MAX_TTL_MS
    assert store.create("o", "up", "s").ttl_ms == MAX_TTL_MS


def test_tasks_are_listed_newest_first_a_page_at_a_time(tmp_path: Path) -> None:
    store = TaskStore(None)
    made = [store.create("o", "up", f"s{i}") for i in range(5)]
    for i, task in enumerate(made):
        task.created_at += i  # distinct creation times
    first, cursor = store.page("o", None, limit=2)
    assert [t.project for t in first] == ["s4", "s3"] and cursor is not None
    second, cursor = store.page("o", cursor, limit=2)
    third, end = store.page("o", cursor, limit=2)
    assert [t.project for t in second + third] == ["s2", "s1", "s0"] and end is None
    with pytest.raises(ValueError):
        store.page("o", "not-a-cursor")
    with pytest.raises(ValueError):
        store.page("someone-else", first[0].task_id)


def test_a_task_a_dead_gateway_left_working_is_interrupted_at_start(tmp_path: Path) -> None:
    before = TaskStore(tmp_path / "tasks")
    task = before.create("o", "up", "shop")
    task.pid = _dead_pid()
    before.save(task)
    done = before.create("o", "down", "shop")
    before.finish(done, "completed", result={"content": [], "isError": False})
    before.save(done)

    after = TaskStore(tmp_path / "tasks")
    after.open()
    again = after.get("o", task.task_id)
    assert again is not None and again.state == "interrupted"
    assert "stopped while this task ran" in (again.message or "")
    assert again.result is not None and again.result["isError"] is True
    assert after.recovered == [again]
    assert after.get("o", done.task_id) is not None and after.get("o", done.task_id).state == "completed"  # type: ignore[union-attr]
    on_disk = json.loads((tmp_path / "tasks" / f"{task.task_id}.json").read_text())
    assert on_disk["state"] == "interrupted"


def test_a_task_of_a_live_gateway_sharing_the_folder_is_left_running(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks")
    task = store.create("o", "up", "shop")
    task.pid, task.pid_started = os.getppid(), process_started(os.getppid())
    store.save(task)
    other = TaskStore(tmp_path / "tasks")
    other.open()
    assert other.get("o", task.task_id).state == "working"  # type: ignore[union-attr]
    assert other.recovered == []


def test_a_cancelled_task_stays_cancelled(tmp_path: Path) -> None:
    store = TaskStore(None)
    task = store.create("o", "up", "shop")
    assert store.finish(task, "cancelled", message="stop")
    assert not store.finish(task, "completed", result={})
    assert task.state == "cancelled"


def test_expired_finished_tasks_are_forgotten_on_disk_too(tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks")
    task = store.create("o", "up", "shop", ttl_ms=MIN_TTL_MS)
    store.finish(task, "completed", result={})
    task.created_at -= 3600
    store.save(task)
    reopened = TaskStore(tmp_path / "tasks")
    reopened.open()
    assert reopened.get("o", task.task_id) is None
    assert not (tmp_path / "tasks" / f"{task.task_id}.json").exists()


# -- idempotency keys -------------------------------------------------------------------------------


def test_a_key_binds_the_tool_and_arguments_but_not_the_answers_a_repeat_carries() -> None:
    base = fingerprint("up", {"project": "shop", "wait": True})
    assert fingerprint("up", {"project": "shop", "wait": True, "confirm": "t", "idempotency_key": "k"}) == base
    assert fingerprint("up", {"wait": True, "project": "shop", "approval": "a1", "services": None}) == base
    assert fingerprint("up", {"project": "shop", "wait": False}) != base
    assert fingerprint("down", {"project": "shop", "wait": True}) != base


def test_keys_are_one_to_128_printable_characters() -> None:
    assert valid_key("9b2f-…-ключ") == "9b2f-…-ключ"
    assert valid_key("k" * 128) is not None
    for bad in ("", "k" * 129, "a\nb", "tab\t", 5, None):
        assert valid_key(bad) is None


def test_a_key_begins_once_then_joins_then_replays_and_refuses_other_calls(tmp_path: Path) -> None:
    ledger = KeyLedger(tmp_path / "keys")
    first = ledger.claim("o", "k", "up", "fp", "shop")
    assert first.action == "begin"
    ledger.save(first.record)
    assert ledger.claim("o", "k", "up", "fp", "shop").action == "join"
    assert ledger.claim("o", "k", "up", "other", "shop").action == "conflict"
    assert ledger.claim("someone-else", "k", "up", "fp", "shop").action == "begin"
    ledger.finish(first.record, {"content": [], "isError": False})
    ledger.save(first.record)
    replay = ledger.claim("o", "k", "up", "fp", "shop")
    assert replay.action == "replay" and replay.record.result == {"content": [], "isError": False}
    # Kept on disk as a hash of the arguments, never the arguments.
    stored = json.loads((tmp_path / "keys" / f"{first.record.name}.json").read_text())
    assert stored["fingerprint"] == "fp" and stored["state"] == "done"


def test_a_key_whose_call_a_crash_cut_short_runs_once_more_and_remembers_it(tmp_path: Path) -> None:
    ledger = KeyLedger(tmp_path / "keys")
    claim = ledger.claim("o", "k", "up", "fp", "shop")
    claim.record.pid = _dead_pid()
    ledger.save(claim.record)

    restarted = KeyLedger(tmp_path / "keys")
    restarted.open()
    again = restarted.claim("o", "k", "up", "fp", "shop")
    assert again.action == "begin"
    assert again.record.attempts == 2
    assert len(again.record.interrupted) == 1 and "stopped while this call ran" in again.record.interrupted[0]["reason"]
    assert restarted.claim("o", "k", "up", "fp", "shop").action == "join"


def test_a_call_refused_before_it_acted_gives_its_key_back(tmp_path: Path) -> None:
    ledger = KeyLedger(tmp_path / "keys")
    claim = ledger.claim("o", "k", "up", "fp", "shop")
    ledger.save(claim.record)
    assert ledger.release(claim.record) is False
    assert not (tmp_path / "keys" / f"{claim.record.name}.json").exists()
    assert ledger.claim("o", "k", "up", "another call now", "shop").action == "begin"


def test_a_key_is_forgotten_after_a_day(tmp_path: Path) -> None:
    ledger = KeyLedger(tmp_path / "keys")
    claim = ledger.claim("o", "k", "up", "fp", "shop")
    ledger.finish(claim.record, {})
    claim.record.created_at -= KEY_TTL_S + 1
    assert ledger.claim("o", "k", "down", "other", "shop").action == "begin"
