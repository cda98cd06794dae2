"""The one point where every answer leaves the MCP server: secrets are redacted there.

A middleware on the server's chain sees the result of every request (``tools/call``,
``resources/read``, ``prompts/get``, ``tasks/result``, ``completion/complete``...) and the protocol
errors raised instead, and passes each through the process's :data:`~gateway.redact.REDACTOR`.
Notifications (progress, log messages) are redacted where they are sent (:mod:`.notify`, the
tool kit's progress). So no tool has to remember it.
"""

from __future__ import annotations

from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from ..redact import REDACTOR, Redactor

__all__ = ["redacting_middleware"]


def redacting_middleware(redactor: Redactor = REDACTOR) -> Any:
    """The middleware (outermost of the gateway's own, so it sees results as they are sent)."""

    async def redact_secrets(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        try:
            result = await call_next(ctx)
        except MCPError as exc:
            if redactor:
                error = exc.error
                exc.error = error.model_copy(
                    update={"message": redactor.redact(error.message), "data": redactor.redact_data(error.data)}
                )
                exc.args = (exc.error.code, exc.error.message, exc.error.data)
            raise
        if not redactor or result is None:
            return result
        if isinstance(result, BaseModel):
            dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
            redacted = redactor.redact_data(dumped)
            # Unchanged: the handler's own object goes on, with whatever the SDK's serialisation makes of it.
            return result if redacted is dumped else redacted
        cleaned: dict[str, Any] = redactor.redact_data(result)
        return cleaned

    return redact_secrets
