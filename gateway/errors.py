"""The gateway's error hierarchy.

Every error carries a message a person (or an agent) can act on. Library errors from docker-py,
the Compose CLI and hvac are translated into these at the boundary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import Violation

__all__ = [
    "ERROR_META_KEY",
    "CONFIRM_META_KEY",
    "GatewayError",
    "InvalidInput",
    "StackNotFound",
    "ComposeFailed",
    "ComposeNotFound",
    "EngineUnavailable",
    "PolicyViolation",
    "PolicyRefused",
    "InsufficientScope",
    "SCOPE_META_KEY",
    "ConfirmationRequired",
    "ApprovalRequired",
    "APPROVAL_META_KEY",
    "APPROVAL_URL_META_KEY",
    "ConfigError",
    "VaultError",
    "SecretUnavailable",
    "SwarmUnavailable",
    "SwarmFailed",
    "AuditUnavailable",
    "ShuttingDown",
    "IdempotencyConflict",
    "StateUnavailable",
    "IDEMPOTENCY_META_KEY",
]


# The key under which an error result's ``_meta`` carries the error's kind, e.g. ``stack_not_found``.
ERROR_META_KEY = "compose-agent/error"
# Where a confirmation_required result carries its token, so a program need not parse the text.
CONFIRM_META_KEY = "compose-agent/confirm"
# Where an insufficient_scope result names the scope that would allow the call.
SCOPE_META_KEY = "compose-agent/scope"
# Where an approval_required result carries the approval's id, and the page a person approves it on.
APPROVAL_META_KEY = "compose-agent/approval"
APPROVAL_URL_META_KEY = "compose-agent/approval_url"
# Where a write tool's result says what its idempotency key did: ran, joined, replayed, retried.
IDEMPOTENCY_META_KEY = "compose-agent/idempotency"


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose.

    ``kind`` is the machine-readable name an error result carries in its ``_meta``, beside the message.
    """

    kind = "gateway_error"


class InvalidInput(GatewayError):
    """An argument failed validation; nothing was changed."""

    kind = "invalid_input"


class StackNotFound(GatewayError):
    """The named stack is neither a folder under the stacks dir nor a running compose project."""

    kind = "stack_not_found"


class ComposeFailed(GatewayError):
    """The Compose CLI exited non-zero. The message holds the tail of its stderr."""

    kind = "compose_failed"

    def __init__(self, message: str, *, returncode: int | None = None, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class ComposeNotFound(GatewayError):
    """No usable Compose v2 CLI was found (or only the end-of-life v1 was)."""

    kind = "compose_not_found"


class EngineUnavailable(GatewayError):
    """The Docker engine could not be reached."""

    kind = "engine_unavailable"


class PolicyViolation(GatewayError):
    """The call is well-formed but not allowed: out of scope, read-only mode, or the gateway's own stack."""

    kind = "policy_violation"


class PolicyRefused(PolicyViolation):
    """The policy guard refuses a stack's compose files. ``violations`` says which rules, where, and the
    ``config.json`` key that would allow each; only the operator can."""

    def __init__(self, message: str, violations: list[Violation]) -> None:
        super().__init__(message)
        self.violations = violations


class InsufficientScope(PolicyViolation):
    """An OAuth token's scopes do not cover this call; ``scope`` names the one that would."""

    kind = "insufficient_scope"

    def __init__(self, message: str, *, scope: str) -> None:
        super().__init__(message)
        self.scope = scope


class ConfirmationRequired(GatewayError):
    """The operator's policy asks for this call to be confirmed; nothing was changed.

    The message holds the plan and ``confirm="<token>"``; the same call with ``confirm`` set acts.
    """

    kind = "confirmation_required"

    def __init__(self, message: str, *, token: str) -> None:
        super().__init__(message)
        self.token = token


class ApprovalRequired(GatewayError):
    """The operator's ``policy.approve`` lists this call: it waits for a person; nothing was changed.

    ``approval`` is the id a person approves (``url`` is where, when the panel's address is known);
    once approved, the same call with ``approval`` set to it acts, once.
    """

    kind = "approval_required"

    def __init__(self, message: str, *, approval: str, url: str | None = None) -> None:
        super().__init__(message)
        self.approval = approval
        self.url = url


class ConfigError(GatewayError):
    """The configuration is invalid. Raised at start-up only."""

    kind = "config_error"


class VaultError(GatewayError):
    """Vault could not give or take a token. The message names the address and path, never the token."""

    kind = "vault_error"


class SecretUnavailable(GatewayError):
    """A stack's secret cannot be resolved: no Vault, no such path or key, Vault unreachable, or a value
    that cannot be a secret. The message names the reference, never a value (gateway.secretrefs)."""

    kind = "secret_unavailable"


class SwarmUnavailable(GatewayError):
    """A stack asks for Docker Swarm, but the engine is no swarm manager (or no docker CLI is there)."""

    kind = "swarm_unavailable"


class SwarmFailed(GatewayError):
    """A Swarm action failed: the docker CLI exited non-zero, or the services did not converge."""

    kind = "swarm_failed"


class AuditUnavailable(GatewayError):
    """The audit log cannot be written, so a mutation that would go unrecorded is refused."""

    kind = "audit_unavailable"


class ShuttingDown(GatewayError):
    """The gateway is stopping: a command was not started, or was stopped after the grace period."""

    kind = "shutting_down"


class IdempotencyConflict(InvalidInput):
    """An ``idempotency_key`` already names another call (other arguments, or another tool); nothing ran."""

    kind = "idempotency_conflict"


class StateUnavailable(GatewayError):
    """A task or an idempotency key could not be kept in the state folder, so the call did not run."""

    kind = "state_unavailable"
