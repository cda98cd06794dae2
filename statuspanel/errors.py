"""The status panel's errors: each one knows the HTTP status it answers with.

Gateway errors (in-process in legacy mode, or tool errors over MCP) are translated into these at
the backend boundary, so routes only ever see this hierarchy.
"""

from __future__ import annotations

__all__ = [
    "for_kind",
    "PanelError",
    "BadRequest",
    "NotAuthorized",
    "Forbidden",
    "NotFound",
    "ActionFailed",
    "GatewayUnavailable",
    "EngineDown",
    "ConfirmationNeeded",
    "ApprovalNeeded",
    "TryLater",
]


class PanelError(Exception):
    """Base of every error the panel answers with on purpose."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, object]:
        return {"error": self.message}


class BadRequest(PanelError):
    """The request is malformed; nothing was sent to the compose-agent."""

    status_code = 400


class NotAuthorized(PanelError):
    """No valid bearer token or login session."""

    status_code = 401


class Forbidden(PanelError):
    """Well-formed but not allowed: a policy of the gateway, or a missing CSRF token."""

    status_code = 403


class NotFound(PanelError):
    """The stack does not exist."""

    status_code = 404


class ActionFailed(PanelError):
    """Compose (or the engine) ran and failed. The message says what it printed."""

    status_code = 502


class _Unavailable(PanelError):
    """A part the operations need is out of reach: the answer names the part, the detail says why."""

    status_code = 503
    part = ""

    def to_json(self) -> dict[str, object]:
        return {"error": f"{self.part} unavailable", "detail": self.message}


class GatewayUnavailable(_Unavailable):
    """The compose-agent cannot be reached or did not answer in time."""

    part = "compose-agent"


class EngineDown(_Unavailable):
    """The Docker engine behind the operations cannot be reached."""

    part = "docker engine"


class TryLater(PanelError):
    """The gateway refused for now (its audit cannot be written, or it is stopping); nothing ran."""

    status_code = 503


class ConfirmationNeeded(PanelError):
    """The operator's ``policy.confirm`` asks for this call to be confirmed; nothing was changed.

    The message holds the gateway's plan; the same request with ``confirm`` set to ``token`` acts.
    """

    status_code = 409

    def __init__(self, message: str, token: str | None) -> None:
        super().__init__(message)
        self.token = token

    def to_json(self) -> dict[str, object]:
        return {"error": self.message, "confirmation_required": True, "confirm": self.token}


class ApprovalNeeded(PanelError):
    """The operator's ``policy.approve`` lists this call: it waits for another person's approval.

    Nothing was changed; ``approval`` is the id, and the panel's page for it is ``/approvals/<id>``.
    """

    status_code = 409

    def __init__(self, message: str, approval: str | None) -> None:
        super().__init__(message)
        self.approval = approval

    def to_json(self) -> dict[str, object]:
        page = f"/approvals/{self.approval}" if self.approval else None
        return {"error": self.message, "approval_required": True, "approval": self.approval, "page": page}


# The gateway's error kinds (``GatewayError.kind``). A tool result carries the kind as
# ``structured_content["error"]``; legacy mode reads it off the exception. One table for both.
_BY_KIND: dict[str, type[PanelError]] = {
    "invalid_input": BadRequest,
    "stack_not_found": NotFound,
    "policy_violation": Forbidden,
    "insufficient_scope": Forbidden,  # the person logged in does not hold the scope
    "compose_failed": ActionFailed,
    "compose_not_found": EngineDown,
    "engine_unavailable": EngineDown,
    # The gateway cannot write its audit, or is stopping: nothing ran, and trying later may work.
    "audit_unavailable": TryLater,
    "shutting_down": TryLater,
    # The panel sends a fresh key per action, so a conflict is a bug of its own; the state
    # folder of tasks and keys out of reach is like the audit's: nothing ran.
    "idempotency_conflict": BadRequest,
    "state_unavailable": TryLater,
}


def for_kind(kind: str, message: str) -> PanelError:
    """The panel error, with its HTTP status, for a gateway error of this kind."""
    return _BY_KIND.get(kind, ActionFailed)(message)
