"""Idempotency keys: the same write, sent again with the same key, runs once.

A caller sends ``idempotency_key`` with a write tool. The first call with a key runs; for 24 hours
after it, the same key from the same caller (see :mod:`gateway.mcp.tasks.calls` for who that is)

- with the same tool and arguments, runs nothing: it joins the call while it runs, and afterwards
  gets its recorded result;
- with another tool or other arguments, is refused (:class:`~gateway.errors.IdempotencyConflict`).

A call its gateway could not finish (a crash, ``kill -9``, a stop mid-command) leaves its key
``interrupted``: the next call with it runs once more, and its record keeps every interrupted attempt.
A call refused before it did anything (a confirmation to give, a scope it lacks) gives its key back.

Each key is one record in ``<state dir>/keys/``, named by a hash of caller and key, written when the
call starts and when it ends. The arguments are kept as a hash only: a deploy's compose file or
``.env`` values never reach the folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .statefiles import RecordFolder, owned_by_live_process, process_started

__all__ = [
    "KeyLedger",
    "KeyRecord",
    "Claim",
    "KEY_TTL_S",
    "MAX_KEY_LENGTH",
    "KEY_PATTERN",
    "IGNORED_ARGUMENTS",
    "fingerprint",
    "valid_key",
]

logger = logging.getLogger(__name__)

KEY_TTL_S = 24 * 3600
MAX_KEY_LENGTH = 128
# 1 to 128 characters, none of them a control character: the tools' schemas say the same, so a key
# their schema accepts is always a key here (a looser check here would run a keyed call unkeyed).
KEY_PATTERN = r"^[^\x00-\x1f\x7f]{1,128}$"
_KEY = re.compile(KEY_PATTERN)
MAX_KEYS_PER_OWNER = 10_000
# Not part of what a key names: the key itself, and the answers a repeated call carries (a
# confirmation token, an approval id) that the first call could not know.
IGNORED_ARGUMENTS = frozenset({"idempotency_key", "confirm", "approval"})

KeyState = Literal["running", "done", "interrupted"]


def fingerprint(tool: str, arguments: Mapping[str, Any]) -> str:
    """What a key is bound to: the tool and its arguments (but :data:`IGNORED_ARGUMENTS`), as a hash.

    Arguments left out and arguments sent as null are the same call; so are no host and ``local``.
    """
    named = {
        k: v
        for k, v in arguments.items()
        if k not in IGNORED_ARGUMENTS and v is not None and not (k == "host" and v == "local")
    }
    canonical = json.dumps([tool, named], sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def valid_key(value: object) -> str | None:
    """``value`` if it is a well-formed key, else None (the tool's own schema then refuses the call)."""
    return value if isinstance(value, str) and _KEY.fullmatch(value) else None


def _record_name(owner: str, key: str) -> str:
    return hashlib.sha256(f"{owner}\0{key}".encode("utf-8", "surrogatepass")).hexdigest()[:48]


@dataclass
class KeyRecord:
    """One key of one caller: the call it names, how that call went, and every attempt a stop cut short."""

    owner: str
    key: str
    tool: str
    project: str | None
    fingerprint: str
    created_at: float
    updated_at: float
    state: KeyState = "running"
    attempts: int = 1
    # One entry per attempt its gateway did not finish: {"started_at", "reason"}.
    interrupted: list[dict[str, Any]] = field(default_factory=list)
    started_at: float = 0.0
    result: dict[str, Any] | None = None
    task_id: str | None = None
    pid: int = field(default_factory=os.getpid)
    # When that process started: a later process that got its pid is not it.
    pid_started: str | None = field(default_factory=lambda: process_started(os.getpid()))

    @property
    def name(self) -> str:
        return _record_name(self.owner, self.key)

    def expired(self, now: float) -> bool:
        return self.state != "running" and now > self.created_at + KEY_TTL_S

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyRecord:
        """Raises: KeyError, TypeError, ValueError: not a key record."""
        record = cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})
        if not all(isinstance(v, str) for v in (record.owner, record.key, record.fingerprint)) or record.state not in (
            "running",
            "done",
            "interrupted",
        ):
            raise ValueError("not a key record")
        return record


@dataclass(frozen=True)
class Claim:
    """What a call with a key should do.

    ``begin``: run it (``record`` is now running; a retry when ``record.interrupted`` is not empty).
    ``join``: the same call runs now. ``replay``: it ran; return ``record.result``. ``conflict``: refuse.
    """

    action: Literal["begin", "join", "replay", "conflict"]
    record: KeyRecord


class KeyLedger:
    """Every caller's keys, in memory and on disk (``folder``; None keeps them in memory only).

    :meth:`claim` decides and records in one step with no await in between, so two calls with one
    key sent at the same moment cannot both begin.

    Raises (:meth:`save`):
        StateUnavailable: a record cannot be written.
    """

    def __init__(self, folder: Path | None) -> None:
        self._files = RecordFolder(folder) if folder is not None else None
        self._records: dict[str, KeyRecord] = {}

    def open(self) -> None:
        """Load the keys on disk; a key whose call a dead gateway left running becomes ``interrupted``.

        Raises:
            StateUnavailable: the folder cannot be read, or a recovered key cannot be written.
        """
        if self._files is None:
            return
        now = time.time()
        recovered = 0
        for name, data in self._files.load():
            try:
                record = KeyRecord.from_json(data)
            except (KeyError, TypeError, ValueError):
                logger.warning("ignoring the key record %s: it is not one", name)
                continue
            if record.name != name:
                continue
            if record.expired(now):
                self._files.remove(name)
                continue
            if record.state == "running" and not owned_by_live_process(record.pid, record.pid_started):
                self.interrupt(record, f"the gateway (pid {record.pid}) stopped while this call ran")
                self._files.write(name, record.to_json())
                recovered += 1
            self._records[name] = record
        if recovered:
            logger.warning("%d keyed call(s) were cut short by a gateway stop; each runs again if asked", recovered)

    def claim(self, owner: str, key: str, tool: str, print_: str, project: str | None) -> Claim:
        """Decide what a call with ``key`` does, and record a beginning at once (in memory; :meth:`save` it)."""
        now = time.time()
        name = _record_name(owner, key)
        record = self._records.get(name)
        if record is not None and record.expired(now):
            record = None
        if record is not None:
            if record.fingerprint != print_:
                return Claim("conflict", record)
            if record.state == "running":
                return Claim("join", record)
            if record.state == "done":
                return Claim("replay", record)
            # interrupted: once more, remembering the attempts that were cut short.
            record.state, record.attempts, record.result, record.task_id = "running", record.attempts + 1, None, None
            record.started_at = record.updated_at = now
            record.pid, record.pid_started = os.getpid(), process_started(os.getpid())
            return Claim("begin", record)
        self._prune(owner, now)
        record = KeyRecord(owner, key, tool, project, print_, now, now, started_at=now)
        self._records[name] = record
        return Claim("begin", record)

    def get(self, owner: str, key: str) -> KeyRecord | None:
        """The owner's record of ``key``, if it has one that has not expired."""
        record = self._records.get(_record_name(owner, key))
        return None if record is None or record.expired(time.time()) else record

    def save(self, record: KeyRecord) -> None:
        """Write ``record`` to disk (blocking: call it from a worker thread)."""
        if self._files is not None:
            self._files.write(record.name, record.to_json())

    def finish(self, record: KeyRecord, result: dict[str, Any]) -> None:
        """The call ended with ``result`` (an error result too): later calls with the key get it back."""
        record.state, record.result, record.updated_at = "done", result, time.time()

    def interrupt(self, record: KeyRecord, reason: str) -> None:
        """The call's gateway stopped before it ended: the key's next call runs it once more."""
        record.interrupted.append({"started_at": record.started_at or record.created_at, "reason": reason})
        record.state, record.result, record.updated_at = "interrupted", None, time.time()

    def release(self, record: KeyRecord) -> bool:
        """The call was refused before it did anything: its key is free again.

        Returns True when the record stays (it keeps earlier interrupted attempts): :meth:`save` it then.
        """
        if record.interrupted:
            record.state, record.attempts, record.updated_at = "interrupted", record.attempts - 1, time.time()
            return True
        self._records.pop(record.name, None)
        if self._files is not None:
            self._files.remove(record.name)
        return False

    def _prune(self, owner: str, now: float) -> None:
        for record in [r for r in self._records.values() if r.expired(now)]:
            self._records.pop(record.name, None)
            if self._files is not None:
                self._files.remove(record.name)
        mine = sorted(
            (r for r in self._records.values() if r.owner == owner and r.state != "running"),
            key=lambda r: r.created_at,
        )
        for record in mine[: max(0, len(mine) - MAX_KEYS_PER_OWNER + 1)]:
            self._records.pop(record.name, None)
            if self._files is not None:
                self._files.remove(record.name)
