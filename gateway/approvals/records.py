"""What an approval is: the request a call leaves, what it is bound to, what became of it, and its public view.

The store that keeps them is :mod:`gateway.approvals.store`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field

from ..errors import InvalidInput

__all__ = [
    "APPROVAL_ID_PATTERN",
    "DEFAULT_APPROVAL_TTL",
    "OPEN",
    "STATUSES",
    "Approval",
    "ApprovalInfo",
    "Approver",
    "Request",
    "Status",
    "check_approval_id",
    "no_longer_pending",
]

# How long a request waits for a person, and then an approval counts once given (policy.approval_ttl).
DEFAULT_APPROVAL_TTL = 3600.0
APPROVAL_ID_PATTERN = r"^[0-9a-f]{32}$"
_ID_RE = re.compile(APPROVAL_ID_PATTERN)

Status = Literal["pending", "approved", "rejected", "used", "void", "expired"]
STATUSES = frozenset(get_args(Status))
# An approval still open: waiting for a person, or approved and not yet used.
OPEN: frozenset[str] = frozenset({"pending", "approved"})


def check_approval_id(value: str) -> str:
    """``value`` if it can be an approval's id.

    Raises:
        InvalidInput: anything else, saying what an id looks like.
    """
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise InvalidInput(
            "an approval id is 32 lowercase hexadecimal characters, as an approval_required result gives it"
        )
    return value


def _rfc3339(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Request:
    """A call that waits for a person, as the edge describes it before an approval exists."""

    tool: str
    project: str
    arguments: dict[str, Any]  # as the audit shows them: never a compose file or an env value
    call: str  # digest of the tool and its real arguments
    caller: str
    on_behalf_of: str | None
    state: str
    plan: str
    host: str | None = None


@dataclass(frozen=True)
class Approver:
    """Who decides: a person, and the caller identity they decide through (their OAuth client, the panel)."""

    person: str
    caller: str


@dataclass(frozen=True)
class Approval:
    """One approval as kept: the request, what it is bound to, and what became of it."""

    id: str
    tool: str
    project: str
    host: str | None
    arguments: dict[str, Any]
    call: str
    caller: str
    on_behalf_of: str | None
    state: str
    plan: str
    status: Status
    requested_at: float
    expires_at: float
    decided_by: str | None = None
    decided_via: str | None = None
    decided_at: float | None = None
    used_at: float | None = None
    note: str | None = None

    def effective(self, now: float) -> Approval:
        """This approval as it stands at ``now``: an open one past its time has expired."""
        if self.status in OPEN and now >= self.expires_at:
            return replace(self, status="expired")
        return self

    def ended_at(self) -> float:
        return max(self.expires_at, self.decided_at or 0.0, self.used_at or 0.0)

    def asked_by(self, caller: str, on_behalf_of: str | None) -> bool:
        return self.caller == caller and self.on_behalf_of == on_behalf_of

    def refusal_for(self, by: Approver) -> str | None:
        """Why ``by`` may not decide this approval as it stands; None when they may (their scope aside).

        Nobody decides their own request: the person who asked is refused through every client.
        """
        if self.on_behalf_of is not None and self.on_behalf_of == by.person:
            return (
                f"{by.person} asked for this change ({self.tool} on '{self.project}'), so another person must "
                "approve or reject it; nobody decides their own request, whichever client or token they use"
            )
        if self.status != "pending":
            return no_longer_pending(self)
        return None

    def info(self, url: str | None = None) -> ApprovalInfo:
        """The public view: no digest, no state; times in RFC 3339."""
        return ApprovalInfo(
            id=self.id,
            status=self.status,
            tool=self.tool,
            project=self.project,
            host=self.host,
            arguments=self.arguments,
            caller=self.caller,
            on_behalf_of=self.on_behalf_of,
            plan=self.plan,
            requested_at=_rfc3339(self.requested_at) or "",
            expires_at=_rfc3339(self.expires_at) or "",
            decided_by=self.decided_by,
            decided_via=self.decided_via,
            decided_at=_rfc3339(self.decided_at),
            used_at=_rfc3339(self.used_at),
            note=self.note,
            url=url,
        )

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> Approval:
        """One kept record.

        Raises:
            ValueError, TypeError, KeyError: it is not one of ours.
        """
        approval = cls(**{name: entry[name] for name in cls.__dataclass_fields__ if name in entry})
        if not _ID_RE.fullmatch(approval.id) or approval.status not in STATUSES:
            raise ValueError("not an approval")
        for name in ("tool", "project", "call", "caller", "state", "plan"):
            if not isinstance(getattr(approval, name), str):
                raise TypeError(f"{name} is not text")
        if not isinstance(approval.arguments, dict):
            raise TypeError("arguments are not an object")
        if not all(isinstance(t, int | float) for t in (approval.requested_at, approval.expires_at)):
            raise TypeError("times are not numbers")
        return approval


class ApprovalInfo(BaseModel):
    """An approval as the ``approve`` and ``reject`` tools, the resources and the panel show it."""

    id: str = Field(description='The approval\'s id: the retry passes it as approval="..."')
    status: Status = Field(
        description="pending, approved, rejected, used (it acted), void (the stack changed), expired"
    )
    tool: str = Field(description="The tool that waits")
    project: str = Field(description="The stack it changes")
    host: str | None = Field(default=None, description="The host of the stack, when not the gateway's own")
    arguments: dict[str, Any] = Field(description="The call's arguments (a compose file by hash, env by names)")
    caller: str = Field(description="Who asked: the token's identity")
    on_behalf_of: str | None = Field(description="The person behind the caller, if any")
    plan: str = Field(description="What the call would do, as planned when it was asked for")
    requested_at: str = Field(description="When it was asked for (RFC 3339)")
    expires_at: str = Field(description="When it stops counting (RFC 3339)")
    decided_by: str | None = Field(default=None, description="The person who approved or rejected it")
    decided_via: str | None = Field(default=None, description="The caller identity they decided through")
    decided_at: str | None = Field(default=None)
    used_at: str | None = Field(default=None, description="When the approved call acted")
    note: str | None = Field(default=None, description="Why it is void, when it is")
    url: str | None = Field(default=None, description="The status panel's page for it, when the panel is known")


def no_longer_pending(approval: Approval) -> str:
    when = _rfc3339(approval.decided_at or approval.used_at or approval.expires_at)
    return {
        "approved": f"approval {approval.id} was already approved by {approval.decided_by}",
        "rejected": f"approval {approval.id} was rejected by {approval.decided_by} at {when}",
        "used": f"approval {approval.id} was already used at {_rfc3339(approval.used_at)}: an approval acts once",
        "void": f"approval {approval.id} is void: {approval.note or 'the stack changed'}",
        "expired": f"approval {approval.id} expired at {_rfc3339(approval.expires_at)}",
        "pending": f"approval {approval.id} still waits for a person",
    }[approval.status]
