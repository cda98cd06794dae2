"""The audit log itself: one JSON-lines file, written ahead of every mutation (see :mod:`gateway.audit`)."""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AuditUnavailable
from ..redact import REDACTOR
from ..statefiles import owned_by_live_process
from .context import ApprovalStep, current_approval, current_host, current_tags
from .digest import RefusalDigest, RefusalKey, SpaceWatch, Summary, free_bytes, timestamp

__all__ = ["AuditLog", "Intent"]

logger = logging.getLogger(__name__)

# Recovery reads only the end of a large file: an intent without its outcome belongs to a run that
# ended at most one Compose timeout (15 min) of audit lines before the end, far less than this.
_RECOVERY_TAIL_BYTES = 64 * 1024 * 1024
MIB = 1024 * 1024
DEFAULT_RESERVE = 64 * MIB


@dataclass
class Intent:
    """A mutation announced in the log; hand it back to :meth:`AuditLog.outcome` when it ends."""

    id: str
    caller: str
    control_plane: str
    tool: str
    arguments: dict[str, Any]
    on_behalf_of: str | None = None
    started: float = field(default_factory=time.perf_counter)
    # Read when the line is made: the outcome line of an intent says the same.
    approval: ApprovalStep | None = field(default_factory=current_approval)
    host: str | None = field(default_factory=current_host)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


class AuditLog:
    """An append-only JSON-lines audit file, written ahead of every mutation.

    ``reserve`` bytes of the disk are kept for intent and outcome lines: refusal lines are counted,
    not written, below it. ``summary_interval`` is how often repeated refusals are summarised.

    Raises:
        AuditUnavailable: the file cannot be opened (at start: the entry point says so and exits 2).
    """

    def __init__(self, path: Path, *, reserve: int = DEFAULT_RESERVE, summary_interval: float = 60.0) -> None:
        self.path = path
        self.reserve = reserve
        self._lock = threading.Lock()
        self._fd = -1
        self._identity: tuple[int, int] | None = None
        self._digest = RefusalDigest(interval=summary_interval)
        #: The disk's free space as last seen (``space.free``, ``space.low``), for /health.
        self.space = SpaceWatch(path, reserve, summary_interval)
        with self._lock:
            self._open()

    # -- the file -----------------------------------------------------------------------------------

    def _open(self) -> None:
        hint = "point AUDIT_LOG at a file this user can write"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditUnavailable(
                f"cannot create the folder {self.path.parent} of the audit log: {exc.strerror or exc}; {hint}"
            ) from None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise AuditUnavailable(f"cannot open the audit log {self.path}: {exc.strerror or exc}; {hint}") from None
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        st = os.fstat(fd)
        self._identity = (st.st_dev, st.st_ino)
        if stat.S_ISREG(st.st_mode) and st.st_size > 0 and os.pread(fd, 1, st.st_size - 1) != b"\n":
            # A crash mid-line left a torn last line: end it, or the next line would be glued to it.
            os.write(fd, b"\n")

    def _reopen_if_moved(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            logger.warning("the audit log %s was deleted or moved; starting a new file", self.path)
            self._open()
            return
        if (st.st_dev, st.st_ino) != self._identity:
            logger.info("the audit log %s was rotated; reopening it", self.path)
            self._open()

    def _append(self, record: dict[str, Any], *, sync: bool) -> None:
        """Write one line (reopening a rotated file first); raise AuditUnavailable if it did not land."""
        with self._lock:
            self._write_summaries(self._digest.due())
            self._append_locked(record, sync=sync, refusal=False)

    def _append_locked(self, record: dict[str, Any], *, sync: bool, refusal: bool) -> bool:
        """Write one line under the lock. A refusal line is not written (False) when the disk is under its reserve.

        Raises:
            AuditUnavailable: the line did not land.
        """
        # A secret resolved from Vault never lands here, in any form the redactor knows (gateway.redact).
        data = (REDACTOR.redact(json.dumps(record, separators=(",", ":"), default=str)) + "\n").encode()
        try:
            if self._fd < 0:
                raise OSError(errno.EBADF, "the audit log is closed")
            self._reopen_if_moved()
            free = free_bytes(self._fd)
            if refusal and free is not None and free - len(data) < self.reserve:
                self.space.note(free)
                return False
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(errno.EIO, f"short write ({written} of {len(data)} bytes)")
            if sync:
                os.fsync(self._fd)
        except AuditUnavailable:
            raise
        except OSError as exc:
            raise AuditUnavailable(
                f"the audit log {self.path} cannot be written ({exc.strerror or exc}); "
                "free disk space or fix its permissions, then retry"
            ) from None
        self.space.note(None if free is None else free - len(data))
        return True

    # -- lines ----------------------------------------------------------------------------------------

    def intent(
        self,
        *,
        caller: str,
        control_plane: str,
        tool: str,
        arguments: dict[str, Any],
        on_behalf_of: str | None = None,
    ) -> Intent:
        """Announce a mutation, on disk, before it runs.

        Raises:
            AuditUnavailable: the line could not be written; the caller must not run the mutation.
        """
        entry = Intent(uuid.uuid4().hex[:16], caller, control_plane, tool, arguments, on_behalf_of)
        record = self._record(entry, "intent")
        record["pid"] = os.getpid()
        tags = current_tags()
        if tags:
            record.update({k: v for k, v in tags.items() if k not in record})
        self._append(record, sync=True)
        return entry

    def outcome(self, intent: Intent, *, outcome: str, error: str | None = None) -> bool:
        """Record how an announced mutation ended. A failure is logged (the deed is done); False then."""
        record = self._record(intent, "outcome")
        record.update(outcome=outcome, duration_ms=round(intent.elapsed_ms(), 2))
        if error is not None:
            record["error"] = error
        try:
            self._append(record, sync=True)
        except AuditUnavailable as exc:
            logger.error("%s (outcome %s of %s %s)", exc, outcome, intent.tool, intent.id)
            return False
        return True

    def write(
        self,
        *,
        caller: str,
        control_plane: str,
        tool: str,
        arguments: dict[str, Any],
        outcome: str,
        duration_ms: float,
        error: str | None = None,
        on_behalf_of: str | None = None,
    ) -> bool:
        """One self-contained outcome line, for a call that was refused before anything ran.

        The first of its caller, tool and reason in an interval is written; the repeats are counted
        into a ``summary`` line at the interval's end. Not fsynced: a flood of refusals must not queue
        on the disk. A failure is logged; False then.
        """
        entry = Intent(uuid.uuid4().hex[:16], caller, control_plane, tool, arguments, on_behalf_of)
        step = (entry.approval.id, entry.approval.step) if entry.approval is not None else None
        key: RefusalKey = (caller, control_plane, tool, error or outcome, on_behalf_of, step)
        record = self._record(entry, "outcome")
        record.update(outcome=outcome, duration_ms=round(duration_ms, 2))
        if error is not None:
            record["error"] = error
        try:
            with self._lock:
                self._write_summaries(self._digest.due())
                if self._digest.admit(key) and not self._append_locked(record, sync=False, refusal=True):
                    self._digest.withhold(key)
        except AuditUnavailable as exc:
            logger.error("%s (refusal of %s by %s)", exc, tool, caller)
            return False
        return True

    def flush_summaries(self) -> None:
        """Write the summaries of the interval so far (the entry point calls it once an interval, and at close)."""
        with self._lock:
            self._write_summaries(self._digest.flush())

    def _write_summaries(self, summaries: list[Summary]) -> None:
        lost = 0
        for summary in summaries:
            try:
                written = self._append_locked(summary.record(), sync=False, refusal=True)
            except AuditUnavailable:
                written = False  # never in the way of the line being written now
            lost += 0 if written else summary.count
        if lost:
            logger.warning("%d refusal(s) went unrecorded: the audit log's disk is under its reserve", lost)

    @staticmethod
    def _record(entry: Intent, phase: str) -> dict[str, Any]:
        record: dict[str, Any] = {
            "time": timestamp(time.time()),
            "id": entry.id,
            "phase": phase,
            "caller": entry.caller,
            "control_plane": entry.control_plane,
            "tool": entry.tool,
            "arguments": entry.arguments,
        }
        if entry.on_behalf_of is not None:
            record["on_behalf_of"] = entry.on_behalf_of
        if entry.host is not None:
            record["host"] = entry.host
        if entry.approval is not None:
            record["approval"] = entry.approval.id
            record["approval_step"] = entry.approval.step
        return record

    # -- start-up -------------------------------------------------------------------------------------

    def recover(self) -> int:
        """Give every intent left without an outcome by a process that is gone an ``unknown`` outcome.

        Intents of a live process (another gateway sharing the file) are left alone. Returns how
        many were resolved.

        Raises:
            AuditUnavailable: a resolution line could not be written.
        """
        pending = self._pending_intents()
        resolved = 0
        for record in pending:
            pid = record.get("pid")
            if owned_by_live_process(pid):
                continue
            line: dict[str, Any] = {"time": timestamp(time.time()), "id": record["id"], "phase": "outcome"}
            line.update({k: record[k] for k in ("caller", "control_plane", "tool", "arguments") if k in record})
            for key in ("on_behalf_of", "host", "approval", "approval_step"):
                if key in record:
                    line[key] = record[key]
            line.update(
                outcome="unknown",
                recovered=True,
                error=(
                    f"the gateway (pid {pid}) stopped before this call finished, at the latest at this line's "
                    "time; docker compose may or may not have completed it: check the stack with ps"
                ),
            )
            self._append(line, sync=True)
            resolved += 1
        if resolved:
            logger.warning("the audit log held %d call(s) interrupted by a crash; each now has an outcome", resolved)
        return resolved

    def _pending_intents(self) -> list[dict[str, Any]]:
        try:
            if not stat.S_ISREG(os.stat(self.path).st_mode):
                return []  # a device (/dev/full, a pipe) cannot be read back, and must not be
            with open(self.path, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - _RECOVERY_TAIL_BYTES))
                if size > _RECOVERY_TAIL_BYTES:
                    handle.readline()  # most likely a partial line
                pending: dict[str, dict[str, Any]] = {}
                for raw in handle:
                    try:
                        record = json.loads(raw)
                    except ValueError:
                        continue  # a torn last line of a crash, or foreign text: not ours to judge
                    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                        continue
                    if record.get("phase") == "intent":
                        pending[record["id"]] = record
                    elif record.get("phase") == "outcome":
                        pending.pop(record["id"], None)
        except OSError as exc:
            # A write-only or special file (/dev/full) cannot be read back: nothing to recover from it.
            logger.warning("cannot read the audit log %s to recover interrupted calls: %s", self.path, exc.strerror)
            return []
        return list(pending.values())

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                self._write_summaries(self._digest.flush())
                os.close(self._fd)
                self._fd = -1
