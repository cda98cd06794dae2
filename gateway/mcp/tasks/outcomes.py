"""How a detached call ended, in words and for its idempotency key.

A key is kept with its call's result only when the call got to act: a call refused before it did
anything (it needed a confirmation, a scope, a valid argument) gives its key back, and one its
gateway stopped (``shutting_down``) leaves it ``interrupted``, so that the same key runs it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

import anyio
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent

from ...errors import ERROR_META_KEY, GatewayError
from ...fleet import Fleet
from ...models import PsResult

__all__ = ["EngineNow", "NOT_STARTED", "describe_ps", "engine_now_of", "finished_message", "key_outcome"]

# What the engine shows now, for a stack a call was cut short on: one line a person can read.
EngineNow = Callable[[str | None], Awaitable[str]]

# Error kinds of a call refused before it acted: its key is free again.
NOT_STARTED = frozenset(
    {
        "invalid_input",
        "stack_not_found",
        "policy_violation",
        "insufficient_scope",
        "confirmation_required",
        "approval_required",
        "audit_unavailable",
        "compose_not_found",
        "engine_unavailable",
        "state_unavailable",
        "input_required",
    }
)
# Error kinds of a call its gateway stopped: the key's next call runs it once more.
STOPPED = frozenset({"shutting_down", "interrupted"})
_ENGINE_WAIT_S = 15.0
_MAX_MESSAGE = 300


def key_outcome(result: CallToolResult | None, error: MCPError | None) -> Literal["finish", "release", "interrupt"]:
    """What a call's end does to its idempotency key."""
    if error is not None or result is None:
        return "release"
    if not result.is_error:
        return "finish"
    kind = (result.meta or {}).get(ERROR_META_KEY)
    if kind in STOPPED:
        return "interrupt"
    if kind is None or kind in NOT_STARTED:
        # No kind: the SDK refused the arguments before any of ours ran.
        return "release"
    return "finish"


def finished_message(tool: str, result: CallToolResult | None, error: MCPError | None) -> str:
    """A task's last status message: the result's first line (its message when it has one)."""
    if error is not None:
        return f"{tool} failed: {error.message}"[:_MAX_MESSAGE]
    if result is None:
        return f"{tool} ended without a result"
    structured = result.structured_content
    if not result.is_error and isinstance(structured, dict) and isinstance(structured.get("message"), str):
        return str(structured["message"])[:_MAX_MESSAGE]
    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    first = next((line for text in texts for line in text.splitlines() if line.strip()), "")
    return (first or f"{tool} {'failed' if result.is_error else 'finished'}")[:_MAX_MESSAGE]


def describe_ps(ps: PsResult) -> str:
    """``web running (healthy), db exited (exit 1)``: each service as ps shows it."""
    parts = []
    for service in ps.services:
        detail = [service.health] if service.health else []
        if service.exit_code is not None and service.state != "running":
            detail.append(f"exit {service.exit_code}")
        parts.append(f"{service.service} {service.state}" + (f" ({', '.join(detail)})" if detail else ""))
    return ", ".join(parts) if parts else "no containers"


def engine_now_of(fleet: Fleet) -> EngineNow:
    """What ``ps`` shows of a stack now, as one line; never raises.

    A task on another host names its stack ``host/project`` (see :mod:`.calls`).
    """

    async def engine_now(project: str | None) -> str:
        if project is None:
            return "(no stack was named)"
        host, _, name = project.rpartition("/")
        try:
            with anyio.fail_after(_ENGINE_WAIT_S):
                return describe_ps(await fleet.get(host or None).ps(name))
        except TimeoutError:
            return f"(the engine did not answer ps within {_ENGINE_WAIT_S:g} s)"
        except GatewayError as exc:
            return f"(ps could not read it: {str(exc).splitlines()[0]})"

    return engine_now
