"""A task on the wire: the 2025-11-25 shapes (core protocol) and the 2026-07-28 ones (the extension).

The two revisions name the same things differently (``ttl`` and ``ttlMs``), and disagree on one
status: a tool call that ended in an error result is ``failed`` on 2025-11-25 and ``completed`` (with
that result) on the extension, where ``failed`` is kept for protocol errors. A task its gateway could
not finish is ``failed`` on both, with the reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, CallToolResult

from ...tasks import TaskRecord

__all__ = [
    "TASKS_EXTENSION",
    "LEGACY_VERSION",
    "RELATED_TASK_META_KEY",
    "IMMEDIATE_RESPONSE_META_KEY",
    "POLL_INTERVAL_MS",
    "legacy_status",
    "legacy_task",
    "modern_status",
    "modern_task",
    "created",
    "unwrap_created",
    "legacy_payload",
    "iso",
]

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
# The one revision with tasks in the core protocol.
LEGACY_VERSION = "2025-11-25"
RELATED_TASK_META_KEY = "io.modelcontextprotocol/related-task"
# What a host may hand its model at once while the task runs (2025-11-25, provisional).
IMMEDIATE_RESPONSE_META_KEY = "io.modelcontextprotocol/model-immediate-response"
# Compose's steps take seconds; polling faster only costs requests.
POLL_INTERVAL_MS = 1000
# Carries a created task from the tools/call handler to the 2025-11-25 middleware that answers it.
_CREATED_META_KEY = "compose-agent/created-task"


def iso(timestamp: float) -> str:
    """ISO 8601, UTC, milliseconds."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_error(record: TaskRecord) -> bool:
    return bool(record.result and record.result.get("isError"))


def legacy_status(record: TaskRecord) -> str:
    if record.state == "completed":
        return "failed" if _is_error(record) else "completed"
    if record.state in ("interrupted", "failed"):
        return "failed"
    return record.state


def modern_status(record: TaskRecord) -> str:
    return "failed" if record.state in ("interrupted", "failed") else record.state


def _common(record: TaskRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "taskId": record.task_id,
        "createdAt": iso(record.created_at),
        "lastUpdatedAt": iso(record.updated_at),
    }
    if record.message:
        fields["statusMessage"] = record.message
    return fields


def legacy_task(record: TaskRecord) -> dict[str, Any]:
    """The 2025-11-25 ``Task``."""
    task = {**_common(record), "status": legacy_status(record), "ttl": record.ttl_ms}
    if not record.terminal:
        task["pollInterval"] = POLL_INTERVAL_MS
    return task


def modern_task(record: TaskRecord, *, detailed: bool = True) -> dict[str, Any]:
    """The extension's ``DetailedTask`` (``Task`` without ``detailed``): a finished one carries its result or error."""
    task = {**_common(record), "status": modern_status(record), "ttlMs": record.ttl_ms}
    if not record.terminal:
        task["pollIntervalMs"] = POLL_INTERVAL_MS
    if not detailed:
        return task
    if record.state == "completed" and record.result is not None:
        task["result"] = record.result
    elif record.state == "failed":
        task["error"] = record.error or {"code": INTERNAL_ERROR, "message": record.message or "the call failed"}
    elif record.state == "interrupted":
        task["error"] = {"code": INTERNAL_ERROR, "message": record.message or "the gateway stopped"}
    return task


def _immediate(record: TaskRecord) -> str:
    where = f" on '{record.project}'" if record.project else ""
    return (
        f"{record.tool}{where} runs as task {record.task_id}; ask tasks/get for its progress and tasks/result "
        "for its outcome"
    )


def created(version: str, record: TaskRecord) -> CallToolResult | dict[str, Any]:
    """The answer to a tools/call that made (or joined) a task.

    On the extension: the ``CreateTaskResult`` itself (``resultType: task``). On 2025-11-25, where a
    tools/call result must look like a CallToolResult until the middleware answers it, a carrier
    that :func:`unwrap_created` turns into the ``CreateTaskResult``.
    """
    meta = {IMMEDIATE_RESPONSE_META_KEY: _immediate(record)}
    if version == LEGACY_VERSION:
        carried = {"task": legacy_task(record), "_meta": meta}
        return CallToolResult(content=[], _meta={_CREATED_META_KEY: carried})
    return {"resultType": "task", **modern_task(record, detailed=False), "_meta": meta}


def unwrap_created(result: dict[str, Any]) -> dict[str, Any] | None:
    """The 2025-11-25 ``CreateTaskResult`` a tools/call result carries; None for an ordinary result."""
    meta = result.get("_meta")
    if not isinstance(meta, dict):
        return None
    carried = meta.get(_CREATED_META_KEY)
    return dict(carried) if isinstance(carried, dict) else None


def legacy_payload(record: TaskRecord) -> dict[str, Any]:
    """What tasks/result answers for a finished task: exactly what the call would have, tagged with the task.

    Raises:
        MCPError: the call ended in a protocol error; tasks/result answers with that error.
    """
    if record.state == "failed" or record.result is None:
        error = record.error or {"code": INTERNAL_ERROR, "message": record.message or "the call failed"}
        raise MCPError(int(error.get("code", INTERNAL_ERROR)), str(error.get("message", "the call failed")))
    payload = dict(record.result)
    payload["_meta"] = {**(payload.get("_meta") or {}), RELATED_TASK_META_KEY: {"taskId": record.task_id}}
    return payload
