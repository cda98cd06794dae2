"""A tool's error result, as the panel error with the right HTTP status.

The gateway names the kind of each error in the result's ``_meta``; the text is matched only for
results without one (the SDK's own argument checks, or an older gateway).
"""

from __future__ import annotations

import re

from mcp_types import CallToolResult, TextContent

from gateway.api import APPROVAL_META_KEY, CONFIRM_META_KEY, ERROR_META_KEY

from .errors import (
    ActionFailed,
    ApprovalNeeded,
    BadRequest,
    ConfirmationNeeded,
    EngineDown,
    Forbidden,
    NotFound,
    PanelError,
    for_kind,
)

__all__ = ["classify_tool_error", "classify_tool_result"]


def classify_tool_result(result: CallToolResult) -> PanelError:
    """The panel error, with the right HTTP status, for a tool's error result."""
    message = _error_text(result)
    meta = result.meta or {}
    kind = meta.get(ERROR_META_KEY)
    if kind == "confirmation_required":
        token = meta.get(CONFIRM_META_KEY)
        return ConfirmationNeeded(message, token if isinstance(token, str) else None)
    if kind == "approval_required":
        approval = meta.get(APPROVAL_META_KEY)
        return ApprovalNeeded(message, approval if isinstance(approval, str) else None)
    if isinstance(kind, str):
        return for_kind(kind, message)
    return classify_tool_error(message)


def classify_tool_error(message: str) -> PanelError:
    """Turn an error result's text into the panel error with the right HTTP status.

    Used when the result carries no kind: the SDK's own argument checks, or an older gateway. The
    wording of each kind is stable (see ``gateway/catalog.py`` and ``gateway/stacks.py``), so it is matched here.
    Compose's own output is checked first: its stderr may contain any of the other phrases.
    """
    message = _TOOL_PREFIX_RE.sub("", message, count=1)
    lowered = message.lower()
    if lowered.startswith("docker compose "):
        return ActionFailed(message)
    if lowered.startswith("docker engine error"):
        return EngineDown(message)
    if "refusing to" in lowered or "may not call" in lowered:
        return Forbidden(message)
    if "not found; known stacks" in lowered:
        return NotFound(message)
    if any(phrase in lowered for phrase in _BAD_INPUT_PHRASES):
        return BadRequest(message)
    return ActionFailed(message)


# The SDK wraps a ToolError's text as "Error executing tool <name>: <text>"; the text is what a person needs.
_TOOL_PREFIX_RE = re.compile(r"^Error executing tool [\w.-]+: ")
_BAD_INPUT_PHRASES = (
    "invalid ",
    "must be",
    "is neither",
    "at most",
    "not a valid",
    "has no container for service",
    "is external",
    "simplify the pattern",
)


def _error_text(result: CallToolResult) -> str:
    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    return "\n".join(texts).strip() or "the compose-agent reported an error without a message"
