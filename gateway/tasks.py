"""Tasks: handles on write calls that run on after their request answered, kept in the state folder.

A task belongs to its owner (see :mod:`gateway.mcp.tasks.calls` for who that is) and to no one else:
:meth:`TaskStore.get` and :meth:`TaskStore.page` answer only the owner. Each task is one record in
``<state dir>/tasks/``, written when it is created and when it ends (its progress lives in memory
only), so a restarted gateway still knows every task. One that was running when its gateway died
is found at start, still ``working``, and ends there as ``interrupted``: never left working.

This module knows no protocol: :mod:`gateway.mcp.tasks` maps these records onto the wire.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ERROR_META_KEY
from .statefiles import RecordFolder, owned_by_live_process, process_started

__all__ = [
    "TaskRecord",
    "TaskState",
    "TaskStore",
    "DEFAULT_TTL_MS",
    "MAX_TTL_MS",
    "MIN_TTL_MS",
    "MAX_WORKING_PER_OWNER",
    "error_payload",
]

logger = logging.getLogger(__name__)

# working: running now. completed: it returned a result (an error result too). cancelled: stopped by
# tasks/cancel. interrupted: its gateway stopped or died while it ran. failed: a protocol error.
TaskState = Literal["working", "completed", "cancelled", "interrupted", "failed"]
TERMINAL: frozenset[str] = frozenset({"completed", "cancelled", "interrupted", "failed"})

# A day, like an idempotency key: long enough to ask again after a gateway restart.
DEFAULT_TTL_MS = 24 * 3600 * 1000
MAX_TTL_MS = DEFAULT_TTL_MS
MIN_TTL_MS = 60 * 1000
MAX_WORKING_PER_OWNER = 16
# Records kept per owner; beyond it the oldest finished ones go first.
MAX_KEPT_PER_OWNER = 1000
PAGE_SIZE = 50


def error_payload(text: str, kind: str) -> dict[str, Any]:
    """A tool's error result, as it goes on the wire: the text, and the kind in ``_meta``."""
    return {"content": [{"type": "text", "text": text}], "isError": True, "_meta": {ERROR_META_KEY: kind}}


@dataclass
class TaskRecord:
    """One task. ``result`` is the call's result as it goes on the wire; ``error`` a protocol error."""

    task_id: str
    owner: str
    tool: str
    project: str | None
    created_at: float
    updated_at: float
    ttl_ms: int
    state: TaskState = "working"
    message: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    key: str | None = None
    pid: int = field(default_factory=os.getpid)
    # When that process started: a later process that got its pid is not it.
    pid_started: str | None = field(default_factory=lambda: process_started(os.getpid()))

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def touch(self, message: str | None) -> None:
        """The running task's latest status message (memory only: a restart ends the task anyway)."""
        if not self.terminal:
            self.message = message
            self.updated_at = time.time()

    def expired(self, now: float) -> bool:
        """A finished task past its time to live; a running one never expires."""
        return self.terminal and now > self.created_at + self.ttl_ms / 1000

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskRecord:
        """Raises: KeyError, TypeError, ValueError: not a task record."""
        record = cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})
        if (
            not isinstance(record.task_id, str)
            or not isinstance(record.owner, str)
            or record.state
            not in (
                "working",
                *TERMINAL,
            )
        ):
            raise ValueError("not a task record")
        return record


class TaskStore:
    """Every task this gateway knows, in memory, each also on disk (``folder``; None keeps them in memory only).

    Raises (:meth:`save`):
        StateUnavailable: a record cannot be written.
    """

    def __init__(self, folder: Path | None) -> None:
        self._files = RecordFolder(folder) if folder is not None else None
        self._records: dict[str, TaskRecord] = {}
        # Tasks a gateway that died left working, ended here as interrupted; see :meth:`open`.
        self.recovered: list[TaskRecord] = []

    def open(self) -> None:
        """Load the tasks on disk. Those a dead gateway left working become ``interrupted`` (saved at once).

        A task whose gateway still runs (another process sharing the folder) is left as it is.

        Raises:
            StateUnavailable: the folder cannot be read, or a recovered task cannot be written.
        """
        if self._files is None:
            return
        now = time.time()
        for name, data in self._files.load():
            try:
                record = TaskRecord.from_json(data)
            except (KeyError, TypeError, ValueError):
                logger.warning("ignoring the task record %s: it is not one", name)
                continue
            if record.task_id != name:
                continue
            if record.expired(now):
                self._files.remove(name)
                continue
            self._records[name] = record
            if record.state == "working" and not owned_by_live_process(record.pid, record.pid_started):
                self.interrupt(record, f"the gateway (pid {record.pid}) stopped while this task ran")
                self.save(record)
                self.recovered.append(record)
        if self.recovered:
            logger.warning("%d task(s) ran when the gateway stopped; each is now interrupted", len(self.recovered))

    # -- lifecycle ----------------------------------------------------------------------------------

    def create(
        self, owner: str, tool: str, project: str | None, *, ttl_ms: int | None = None, key: str | None = None
    ) -> TaskRecord:
        """A new working task, in memory; :meth:`save` it before handing out its id."""
        now = time.time()
        ttl = DEFAULT_TTL_MS if ttl_ms is None else min(max(int(ttl_ms), MIN_TTL_MS), MAX_TTL_MS)
        record = TaskRecord(secrets.token_urlsafe(18), owner, tool, project, now, now, ttl, key=key)
        self._records[record.task_id] = record
        self._prune(owner, now)
        return record

    def forget(self, record: TaskRecord) -> None:
        """Drop a task that never got going (its record could not be written)."""
        self._records.pop(record.task_id, None)

    def save(self, record: TaskRecord) -> None:
        """Write ``record`` to disk (blocking: call it from a worker thread)."""
        if self._files is not None:
            self._files.write(record.task_id, record.to_json())

    def finish(
        self,
        record: TaskRecord,
        state: TaskState,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> bool:
        """End a working task; False when it had ended already (a cancelled task stays cancelled)."""
        if record.terminal:
            return False
        record.state, record.result, record.error = state, result, error
        record.message = message if message is not None else record.message
        record.updated_at = time.time()
        return True

    def interrupt(self, record: TaskRecord, reason: str) -> None:
        """End a task its gateway could not finish: the result says why, and that the stack may be half done."""
        text = (
            f"{record.tool} on '{record.project}' did not finish: {reason}. Docker Compose may have done part of "
            "it; check the stack with ps, then call again (with the same idempotency_key, the call runs once more)"
        )
        self.finish(record, "interrupted", result=error_payload(text, "interrupted"), message=text)

    def explain(self, record: TaskRecord, engine: str) -> None:
        """Add what the engine shows now to an interrupted or cancelled task's message and result."""
        text = f"{record.message}\nThe engine now shows: {engine}"
        record.message = text
        if record.result is not None:
            kind = (record.result.get("_meta") or {}).get(ERROR_META_KEY, "interrupted")
            record.result = error_payload(text, str(kind))
        record.updated_at = time.time()

    # -- reads (owner only) -------------------------------------------------------------------------

    def get(self, owner: str, task_id: str) -> TaskRecord | None:
        """The task, if it exists, has not expired, and is ``owner``'s; None in every other case alike."""
        record = self._records.get(task_id)
        if record is None or record.owner != owner or record.expired(time.time()):
            return None
        return record

    def page(self, owner: str, cursor: str | None, limit: int = PAGE_SIZE) -> tuple[list[TaskRecord], str | None]:
        """The owner's tasks, newest first, ``limit`` at a time; the cursor is the last task of a page.

        Raises:
            ValueError: a cursor that is not one of this owner's tasks.
        """
        now = time.time()
        mine = sorted(
            (r for r in self._records.values() if r.owner == owner and not r.expired(now)),
            key=lambda r: (r.created_at, r.task_id),
            reverse=True,
        )
        start = 0
        if cursor is not None:
            ids = [r.task_id for r in mine]
            if cursor not in ids:
                raise ValueError("unknown cursor")
            start = ids.index(cursor) + 1
        chunk = mine[start : start + limit]
        more = start + limit < len(mine)
        return chunk, (chunk[-1].task_id if more and chunk else None)

    def working(self, owner: str) -> int:
        """How many of the owner's tasks run now."""
        return sum(1 for r in self._records.values() if r.owner == owner and r.state == "working")

    # -- housekeeping -------------------------------------------------------------------------------

    def _prune(self, owner: str, now: float) -> None:
        """Drop expired tasks, and the owner's oldest finished ones beyond what is kept per owner."""
        for record in [r for r in self._records.values() if r.expired(now)]:
            self._drop(record)
        finished = sorted(
            (r for r in self._records.values() if r.owner == owner and r.terminal), key=lambda r: r.created_at
        )
        for record in finished[: max(0, len(finished) - MAX_KEPT_PER_OWNER)]:
            self._drop(record)

    def _drop(self, record: TaskRecord) -> None:
        self._records.pop(record.task_id, None)
        if self._files is not None:
            self._files.remove(record.task_id)
