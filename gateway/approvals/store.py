"""The approvals of a state folder: requested, decided and spent, each in one locked step.

The approvals live in ``<state dir>/approvals.json`` (mode 0600, written whole and atomically under
an exclusive lock, see :class:`~gateway.auth.documents.FileDocument`), so they survive a restart and
are shared by every gateway process of the state folder: an agent on stdio is approved through the
HTTP gateway the panel talks to. Each step is one locked read-change-write, so two retries racing
for one approval cannot both act. The file holds no secret: arguments as the audit shows them (a
compose file by its hash, ``env`` by its names) and a digest of the real ones.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..auth.documents import FileDocument
from ..errors import ApprovalRequired, PolicyViolation
from .records import (
    DEFAULT_APPROVAL_TTL,
    OPEN,
    Approval,
    Approver,
    Request,
    check_approval_id,
    no_longer_pending,
)

__all__ = ["APPROVALS_FILE", "ApprovalStore", "MAX_PENDING", "MAX_PENDING_PER_CALLER"]

logger = logging.getLogger(__name__)

APPROVALS_FILE = "approvals.json"
FORMAT_VERSION = 1
# Ended approvals are kept this long, so a late retry hears why it is refused and the panel shows them.
KEEP_ENDED_S = 24 * 3600.0
# One caller cannot crowd the others out: this many of its requests may wait at once.
MAX_PENDING_PER_CALLER = 20
# And all of them together: a static token may claim any person, so the file is bounded on its own too.
MAX_PENDING = 500
MAX_APPROVALS = 2000
MAX_PLAN_CHARS = 16_000


Change = Callable[[dict[str, Approval], float], dict[str, Approval]]


class ApprovalStore:
    """The approvals of one state folder (``path``), or of this process only (``path=None``, for tests).

    Every method is blocking (a file, a lock): the MCP edge calls them in a worker thread.
    """

    def __init__(
        self, path: Path | None = None, *, ttl: float = DEFAULT_APPROVAL_TTL, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.ttl = ttl
        self.clock = clock  # wall time: approvals outlive the process
        self._document = FileDocument(path) if path is not None else None
        self._lock = threading.Lock()
        self._memory: dict[str, Approval] = {}
        self._generation = 0

    @classmethod
    def in_state_dir(cls, state_dir: Path, *, ttl: float = DEFAULT_APPROVAL_TTL) -> ApprovalStore:
        return cls(Path(state_dir) / APPROVALS_FILE, ttl=ttl)

    @property
    def description(self) -> str:
        return self._document.description if self._document is not None else "this process's memory"

    # -- reading ------------------------------------------------------------------------------

    def stamp(self) -> str:
        """Changes whenever the approvals may have (a ``stat`` for the file): watchers poll it."""
        if self._document is None:
            return str(self._generation)
        try:
            st = self._document.path.stat()
        except FileNotFoundError:
            return "absent"
        return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"

    def _load(self) -> dict[str, Approval]:
        if self._document is None:
            return dict(self._memory)
        return _parse(self._document.read_sync().data, self.description)

    def all(self) -> list[Approval]:
        """Every kept approval as it stands now, oldest first.

        Raises:
            ConfigError: the file cannot be read.
        """
        now = self.clock()
        return sorted((a.effective(now) for a in self._load().values()), key=lambda a: (a.requested_at, a.id))

    def get(self, approval_id: str) -> Approval | None:
        """The approval with this id as it stands now; None when there is none.

        Raises:
            ConfigError: the file cannot be read.
        """
        found = self._load().get(approval_id)
        return None if found is None else found.effective(self.clock())

    # -- changing -----------------------------------------------------------------------------

    def _update(self, change: Change) -> None:
        """Apply ``change`` to the approvals under the lock; what it raises leaves them as they were."""

        def apply(data: dict[str, Any] | None) -> dict[str, Any]:
            now = self.clock()
            approvals = _prune(change(_parse(data, self.description), now), now)
            return {"version": FORMAT_VERSION, "approvals": {a.id: asdict(a) for a in approvals.values()}}

        if self._document is not None:
            self._document.update_sync(apply)
            return
        with self._lock:
            now = self.clock()
            self._memory = _prune(change(dict(self._memory), now), now)
            self._generation += 1

    def request(self, request: Request) -> tuple[Approval, bool]:
        """The pending approval for this call: a new one, or the one it already waits on (then False).

        Raises:
            PolicyViolation: this caller already has :data:`MAX_PENDING_PER_CALLER` requests waiting, or
                :data:`MAX_PENDING` wait in all.
            ConfigError: the file cannot be read or written.
        """
        found: list[tuple[Approval, bool]] = []

        def change(approvals: dict[str, Approval], now: float) -> dict[str, Approval]:
            mine = [
                a
                for a in approvals.values()
                if a.effective(now).status == "pending" and a.asked_by(request.caller, request.on_behalf_of)
            ]
            for kept in mine:
                if (kept.tool, kept.call, kept.state) == (request.tool, request.call, request.state):
                    found.append((kept, False))
                    return approvals
            waiting = sum(1 for a in approvals.values() if a.effective(now).status == "pending")
            if waiting >= MAX_PENDING:
                raise PolicyViolation(
                    f"{waiting} approvals already wait for a person, the most the gateway keeps; nothing was changed. "
                    "Ask people to decide them, or wait until they expire"
                )
            if len(mine) >= MAX_PENDING_PER_CALLER:
                raise PolicyViolation(
                    f"{len(mine)} approvals asked for by this caller still wait for a person; nothing was changed. "
                    "Ask a person to decide them, or wait until they expire"
                )
            plan = request.plan if len(request.plan) <= MAX_PLAN_CHARS else request.plan[:MAX_PLAN_CHARS] + "\n..."
            approval = Approval(
                id=secrets.token_hex(16),
                tool=request.tool,
                project=request.project,
                host=request.host,
                arguments=request.arguments,
                call=request.call,
                caller=request.caller,
                on_behalf_of=request.on_behalf_of,
                state=request.state,
                plan=plan,
                status="pending",
                requested_at=now,
                expires_at=now + self.ttl,
            )
            found.append((approval, True))
            return {**approvals, approval.id: approval}

        self._update(change)
        return found[0]

    def decide(
        self, approval_id: str, *, approve: bool, by: Approver, check: Callable[[Approval], None] = lambda _: None
    ) -> Approval:
        """Approve (or reject) a pending approval, as ``by``; ``check`` may refuse (raise) first.

        Raises:
            PolicyViolation: no such approval, ``by`` is the person who asked, or it is no longer pending.
            Whatever ``check`` raises (the person's scope), with nothing changed.
            ConfigError: the file cannot be read or written.
        """
        check_approval_id(approval_id)
        decided: list[Approval] = []

        def change(approvals: dict[str, Approval], now: float) -> dict[str, Approval]:
            kept = approvals.get(approval_id)
            if kept is None:
                raise PolicyViolation(f"there is no approval {approval_id} (it may have ended more than a day ago)")
            check(kept)
            refusal = kept.effective(now).refusal_for(by)
            if refusal is not None:
                raise PolicyViolation(refusal)
            if approve:
                result = replace(kept, status="approved", expires_at=now + self.ttl)
            else:
                result = replace(kept, status="rejected")
            result = replace(result, decided_by=by.person, decided_via=by.caller, decided_at=now)
            decided.append(result)
            return {**approvals, approval_id: result}

        self._update(change)
        return decided[0]

    def redeem(
        self, approval_id: str, *, tool: str, call: str, caller: str, on_behalf_of: str | None, state: str
    ) -> Approval:
        """Spend an approval on this call: it acts once. The approval is *used* (or *void*) afterwards.

        Raises:
            ApprovalRequired: it still waits for a person (the same id; nothing changed).
            PolicyViolation: unknown to this caller, given for another call, rejected, used, expired,
                or the stack changed since it was planned (it is void then). Each says what to do.
            ConfigError: the file cannot be read or written.
        """
        check_approval_id(approval_id)
        outcome: list[Approval | Exception] = []
        again = "call again without approval to ask for a new one"

        def change(approvals: dict[str, Approval], now: float) -> dict[str, Approval]:
            kept = approvals.get(approval_id)
            if kept is None or not kept.asked_by(caller, on_behalf_of):
                # Someone else's id says nothing about it: the same answer as an unknown one.
                raise PolicyViolation(
                    f"no approval {approval_id} was asked for by this caller; nothing was changed; {again}"
                )
            if kept.tool != tool or not secrets.compare_digest(kept.call, call):
                raise PolicyViolation(
                    f"approval {approval_id} was asked for another call ({kept.tool} on '{kept.project}' with "
                    f"{_shown(kept.arguments)}); nothing was changed. Repeat exactly that call, or {again}"
                )
            current = kept.effective(now)
            if current.status == "pending":
                raise ApprovalRequired(
                    f"approval {approval_id} still waits for a person; nothing was changed. Once someone other "
                    "than you approves it, repeat this call with it",
                    approval=approval_id,
                )
            if current.status != "approved":
                raise PolicyViolation(no_longer_pending(current) + f"; nothing was changed; {again}")
            if not secrets.compare_digest(kept.state, state):
                void = replace(kept, status="void", note="the stack changed after it was planned")
                outcome.append(
                    PolicyViolation(
                        f"'{kept.project}' changed since approval {approval_id} was asked for (its files or "
                        f"containers), so the approval is void; nothing was changed; {again}"
                    )
                )
                return {**approvals, approval_id: void}
            used = replace(kept, status="used", used_at=now)
            outcome.append(used)
            return {**approvals, approval_id: used}

        self._update(change)
        result = outcome[0]
        if isinstance(result, Exception):
            raise result
        return result


def _shown(arguments: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in arguments.items() if k != "project") or "no other arguments"


def _parse(data: Mapping[str, Any] | None, where: str) -> dict[str, Approval]:
    """The approvals of a document; a malformed record is dropped (it can never act), and said so."""
    if data is None:
        return {}
    entries = data.get("approvals")
    if data.get("version") != FORMAT_VERSION or not isinstance(entries, dict):
        logger.warning("%s is not an approvals document of version %d; ignoring it", where, FORMAT_VERSION)
        return {}
    approvals: dict[str, Approval] = {}
    for key, entry in entries.items():
        try:
            approval = Approval.from_json(entry)
            if approval.id != key:
                raise ValueError("filed under another id")
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("%s: dropping a malformed approval %.40r: %s", where, key, exc)
            continue
        approvals[key] = approval
    return approvals


def _prune(approvals: dict[str, Approval], now: float) -> dict[str, Approval]:
    """Forget approvals that ended long ago, and the oldest ended ones beyond :data:`MAX_APPROVALS`."""
    kept = {k: a for k, a in approvals.items() if a.ended_at() + KEEP_ENDED_S > now}
    if len(kept) <= MAX_APPROVALS:
        return kept
    ended = sorted((a for a in kept.values() if a.effective(now).status not in OPEN), key=Approval.ended_at)
    for approval in ended[: len(kept) - MAX_APPROVALS]:
        del kept[approval.id]
    return kept
