"""Tasks on 2025-11-25, where they are part of the core protocol: what the handshake and the listing say.

The SDK gives this revision's tasks types only, so three answers are adjusted on their way out:

- ``initialize``: the server declares ``capabilities.tasks`` (list, cancel, and task-augmented
  ``tools/call``) when the connection settles on 2025-11-25;
- ``tools/list``: each write tool says ``execution.taskSupport: optional`` (a task, or not);
- ``tools/call``: a call that made a task answers with the ``CreateTaskResult``, which the SDK's
  own shaping of a tools/call result would refuse (see :func:`.wire.created`).
"""

from __future__ import annotations

from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext

from .wire import LEGACY_VERSION, unwrap_created

__all__ = ["TASKS_CAPABILITY", "legacy_middleware"]

TASKS_CAPABILITY: dict[str, Any] = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}


def legacy_middleware(write_tools: frozenset[str]) -> ServerMiddleware[Any]:
    """The middleware that says and answers what 2025-11-25 expects of a server with tasks."""

    async def tasks_on_2025_11_25(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        if not isinstance(result, dict) or ctx.request_id is None:
            return result
        if ctx.method == "initialize":
            if result.get("protocolVersion") == LEGACY_VERSION:
                capabilities = dict(result.get("capabilities") or {})
                capabilities["tasks"] = TASKS_CAPABILITY
                return {**result, "capabilities": capabilities}
        elif ctx.protocol_version != LEGACY_VERSION:
            return result
        elif ctx.method == "tools/list" and write_tools:
            tools = [
                {**tool, "execution": {"taskSupport": "optional"}} if tool.get("name") in write_tools else tool
                for tool in result.get("tools") or []
            ]
            return {**result, "tools": tools}
        elif ctx.method == "tools/call":
            created = unwrap_created(result)
            if created is not None:
                return created
        return result

    return tasks_on_2025_11_25
