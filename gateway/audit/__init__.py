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
  :mod:`gateway.audit.digest`). Refusal lines are written only while the disk keeps a reserve free
  for intent and outcome lines; a WARNING says so, once an interval, while it is low.

Callers pass validated or bounded arguments only; the caller field is a token's identity, never
a token.

A line about a change that waits for a person's approval carries ``approval`` (the
approval's id) and ``approval_step``: ``requested`` (the call that asked, with its caller and the
person behind it), ``waiting`` (the same call again, before anyone decided), ``approved`` or
``rejected`` (by whom: the line's caller and ``on_behalf_of``), ``executed`` (the intent and
outcome of the approved call) or ``refused`` (a retry the approval did not cover). Grep one id to
read its chain. The approval step is bound to the call being served (:func:`approval_step`).

A line about a call on one host of a fleet names it in ``host`` (``local`` for the gateway's
own engine), bound to the call being served like the approval step (:func:`mark_host`).
"""

from __future__ import annotations

from ..errors import AuditUnavailable
from .context import (
    ON_BEHALF_OF_META_KEY,
    ApprovalStep,
    approval_step,
    bounded_arguments,
    call_tags,
    mark_approval,
    mark_host,
    on_behalf_of,
    on_behalf_of_meta,
)
from .log import AuditLog, Intent

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
    "mark_host",
    "call_tags",
]
