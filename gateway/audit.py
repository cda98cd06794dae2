"""The audit trail, written ahead: an intent line on disk before a mutation runs, an outcome after.

Every line is one JSON object with ``time``, ``id``, ``phase`` (``intent`` or ``outcome``),
``caller``, ``control_plane``, ``tool`` and ``arguments``, and ``on_behalf_of`` when a person
acted through the panel. Outcome lines add ``outcome`` (``ok``, ``error``, ``cancelled``,
``interrupted``, ``refused`` or ``unknown``), ``duration_ms`` and ``error``. A refusal is a single
outcome line: nothing ran.

- The intent line is flushed to disk (fsync) before the caller may run anything. If it cannot be
  written, :meth:`AuditLog.intent` raises :class:`AuditUnavailable` and the mutation is refused.
- At start, :meth:`AuditLog.recover` gives each intent that a dead process left without an
  outcome (a crash, a SIGKILL) an outcome line saying so.
- A rotated or deleted file is reopened by path before the next line: the file's identity
  (device, inode) is compared on every write, one ``stat`` call.
- Lines are appended with one ``write`` each (O_APPEND), so processes sharing the file (a stdio
  gateway beside an HTTP one) never interleave within a line.
- Refusals that repeat are summarised: the first of each caller, tool and reason in an interval is
  written in full, the rest become one ``summary`` line with their ``count`` (see
  :mod:`gateway.auditdigest`). Refusal lines are written only while the disk keeps a reserve free
  for intent and outcome lines; a WARNING says so, once an interval, while it is low.

Callers pass validated or bounded arguments only; the caller field is a token's identity, never
a token.

[approvals] A line about a change that waits for a person's approval carries ``approval`` (the
approval's id) and ``approval_step``: ``requested`` (the call that asked, with its caller and the
person behind it), ``waiting`` (the same call again, before anyone decided), ``approved`` or
``rejected`` (by whom: the line's caller and ``on_behalf_of``), ``executed`` (the intent and
outcome of the approved call) or ``refused`` (a retry the approval did not cover). Grep one id to
read its chain. The approval step is bound to the call being served (:func:`approval_step`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .auditdigest import RefusalDigest, RefusalKey, SpaceWatch, Summary, free_bytes, timestamp
from .errors import AuditUnavailable, InvalidInput
from .redact import REDACTOR

__all__ = [
    "AuditLog",
    "AuditUnavailable",
    "Intent",
    "bounded_arguments",
    "ON_BEHALF_OF_META_KEY",
    "on_behalf_of",
    "on_behalf_of_meta",
    "ApprovalStep",
    "approval_step",
    "mark_approval",
    "call_tags",
]

# Where a client that acts for a person (the status panel) names them, in the MCP request's `_meta`.
# It is the caller's claim, recorded beside the caller's own identity, never in place of it.
ON_BEHALF_OF_META_KEY = "compose-agent/on_behalf_of"
_MAX_PERSON = 128

logger = logging.getLogger(__name__)

# [tasks] What a call carries beside its arguments (its idempotency key and attempt, its task), set
# around the call and added to its intent line: one key's intents can then be found and counted.
_CALL_TAGS: ContextVar[dict[str, Any] | None] = ContextVar("compose_agent_call_tags", default=None)


@contextmanager
def call_tags(**tags: Any) -> Iterator[None]:
    """[tasks] Add ``tags`` (JSON values) to the intent lines written inside the block (worker threads too)."""
    token = _CALL_TAGS.set({**(_CALL_TAGS.get() or {}), **tags})
    try:
        yield
    finally:
        _CALL_TAGS.reset(token)


# Recovery reads only the end of a large file: an intent without its outcome belongs to a run that
# ended at most one Compose timeout (15 min) of audit lines before the end, far less than this.
_RECOVERY_TAIL_BYTES = 64 * 1024 * 1024
_MAX_TEXT = 200
_MAX_ITEMS = 20
MIB = 1024 * 1024
DEFAULT_RESERVE = 64 * MIB


@dataclass(frozen=True)
class ApprovalStep:
    """[approvals] Which approval a line belongs to, and which step of its chain it records."""

    id: str
    step: str


# [approvals] The approval step of the call being served: every line written for it carries it. Each
# request is served in a task of its own, so a step set for one call never reaches another.
_APPROVAL_STEP: ContextVar[ApprovalStep | None] = ContextVar("compose_agent_approval_step", default=None)


def mark_approval(approval_id: str, step: str) -> None:
    """[approvals] From now on, in this call, audit lines belong to ``approval_id`` at ``step``."""
    _APPROVAL_STEP.set(ApprovalStep(approval_id, step))


@contextmanager
def approval_step(approval_id: str, step: str) -> Iterator[None]:
    """[approvals] The lines written inside belong to ``approval_id`` at ``step``."""
    token = _APPROVAL_STEP.set(ApprovalStep(approval_id, step))
    try:
        yield
    finally:
        _APPROVAL_STEP.reset(token)


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
    # [approvals] Read when the line is made: the outcome line of an intent says the same.
    approval: ApprovalStep | None = field(default_factory=_APPROVAL_STEP.get)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


def on_behalf_of(meta: Mapping[str, Any] | None) -> str | None:
    """The person a request's ``_meta`` says the caller acts for; None when it names no one.

    Raises:
        InvalidInput: the value is not a name of 1 to 128 printable characters.
    """
    if not meta or ON_BEHALF_OF_META_KEY not in meta:
        return None
    value = meta[ON_BEHALF_OF_META_KEY]
    if not isinstance(value, str) or not 1 <= len(value) <= _MAX_PERSON or not value.isprintable():
        raise InvalidInput(
            f"_meta[{ON_BEHALF_OF_META_KEY!r}] must name a person in 1 to {_MAX_PERSON} printable characters"
        )
    return value


def on_behalf_of_meta(person: str) -> dict[str, Any]:
    """The request ``_meta`` that names ``person`` as the one the caller acts for."""
    return {ON_BEHALF_OF_META_KEY: person}


def bounded_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a caller's arguments that is safe to log whatever they were: short and JSON-able.

    Strings are cut at 200 characters, lists and objects at 20 entries (with the full count), so a
    refused call with 1,000 service names or a 1 MB string leaves a line of bounded size.
    """
    return {str(key)[:_MAX_TEXT]: _bounded(value) for key, value in list(arguments.items())[:_MAX_ITEMS]}


def _bounded(value: Any, depth: int = 0) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if len(value) <= _MAX_TEXT else value[:_MAX_TEXT] + f"...({len(value)} chars)"
    if depth >= 2:
        return f"<{type(value).__name__}>"
    if isinstance(value, list | tuple):
        items = [_bounded(v, depth + 1) for v in value[:_MAX_ITEMS]]
        return items if len(value) <= _MAX_ITEMS else [*items, f"...({len(value)} items)"]
    if isinstance(value, Mapping):
        return {str(k)[:_MAX_TEXT]: _bounded(v, depth + 1) for k, v in list(value.items())[:_MAX_ITEMS]}
    return f"<{type(value).__name__}>"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


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
        tags = _CALL_TAGS.get()
        if tags:  # [tasks]
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
        key: RefusalKey = (caller, control_plane, tool, error or outcome, on_behalf_of)
        entry = Intent(uuid.uuid4().hex[:16], caller, control_plane, tool, arguments, on_behalf_of)
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
        if entry.approval is not None:  # [approvals]
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
            if isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid):
                continue
            line: dict[str, Any] = {"time": timestamp(time.time()), "id": record["id"], "phase": "outcome"}
            line.update({k: record[k] for k in ("caller", "control_plane", "tool", "arguments") if k in record})
            for key in ("on_behalf_of", "approval", "approval_step"):
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
