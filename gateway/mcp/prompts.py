"""Prompts that hand the model a stack's live evidence and ask the question an operator would ask.

Each prompt reads through the same operations as the tools, under the same scopes (``ps`` and
``logs``), at the moment the prompt is fetched: the model gets facts, not a request to go and
fetch them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import Message, UserMessage
from mcp_types import EmbeddedResource, TextResourceContents
from pydantic import Field

from ..errors import GatewayError, InvalidInput
from ..models import PsResult, ServiceStatus
from ..operations import ComposeOperations
from ..stacks import validate_services
from .access import principal_of, require_scope
from .resources import gateway_mcp_error, status_uri

__all__ = ["register_prompts", "ERROR_PATTERN", "PROMPT_NAMES"]

# Lines that usually carry the reason a service is unhappy. Case-insensitive, whole words.
ERROR_PATTERN = (
    r"(?i)\b(error|err|fatal|panic|exception|traceback|fail(ed|ure|ing)?|denied|refused|"
    r"unhealthy|killed|oom|segfault|timed? ?out|cannot|can't|unable)\b"
)
# How far back the prompts look: lines per container, and the byte budget they may fill.
ERROR_TAIL = 500
SERVICE_TAIL = 100
EVIDENCE_BYTES = 16 * 1024
PROMPT_NAMES = ("diagnose_stack", "triage_service")

Project = Annotated[str, Field(description="Stack name as shown by list_stacks")]
Service = Annotated[str, Field(description="Service name as shown by ps")]


def _state_table(services: list[ServiceStatus]) -> str:
    if not services:
        return "(the stack has no services and no containers)"
    rows = ["| service | container | state | health | exit code | started at | ports | image |", "|---" * 8 + "|"]
    for s in services:
        cells = [
            s.service,
            s.container or "-",
            s.state,
            s.health or "-",
            "-" if s.exit_code is None else str(s.exit_code),
            s.started_at or "-",
            ", ".join(s.ports) or "-",
            s.image or "-",
        ]
        rows.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(rows)


def _status_resource(ps: PsResult) -> EmbeddedResource:
    return EmbeddedResource(
        type="resource",
        resource=TextResourceContents(
            uri=status_uri(ps.project),
            mime_type="application/json",
            text=json.dumps(ps.model_dump(mode="json"), indent=2),
        ),
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def register_prompts(mcp: MCPServer, ops: ComposeOperations) -> None:
    """Add the gateway's prompts to ``mcp``."""

    def authorize(ctx: Context[Any, Any], name: str, arguments: dict[str, Any]) -> None:
        principal = principal_of(ctx)
        for tool in ("ps", "logs"):
            require_scope(ops, principal, tool, f"prompts/get {name}", arguments)

    @mcp.prompt(
        name="diagnose_stack",
        title="Diagnose a stack",
        description=(
            "The stack's live state (every service's state, health, exit code and start time) and its "
            "recent error lines, with a request to name the most likely cause and the next step."
        ),
    )
    async def diagnose_stack(project: Project, ctx: Context[Any, Any]) -> list[Message]:
        try:
            authorize(ctx, "diagnose_stack", {"project": project[:100]})
            ps = await ops.ps(project)
            errors = await ops.logs(project, tail=ERROR_TAIL, grep=ERROR_PATTERN, max_bytes=EVIDENCE_BYTES)
        except GatewayError as exc:
            raise gateway_mcp_error(exc) from None
        running = sum(s.state == "running" for s in ps.services)
        if errors.text:
            dropped = f" ({errors.dropped_lines} older ones left out)" if errors.truncated else ""
            evidence = f"Recent error lines{dropped}, oldest first:\n```\n{errors.text}\n```"
        else:
            evidence = f"No recent line (the last {ERROR_TAIL} of each container) looks like an error."
        text = (
            f'Diagnose the Docker Compose stack "{project}" on this host.\n\n'
            f"Live state at {_now()} ({running} of {len(ps.services)} running):\n\n"
            f"{_state_table(ps.services)}\n\n{evidence}\n\n"
            "What is the most likely cause of any problem you see, and what is the single next step? "
            "Name the tool call you would make (for example logs with a grep or since, restart, up, or "
            "config), and what its result would have to show to confirm or rule out the cause. "
            "If every service runs, is healthy and nothing looks wrong, say so plainly."
        )
        return [UserMessage(text), UserMessage(_status_resource(ps))]

    @mcp.prompt(
        name="triage_service",
        title="Triage one service",
        description=(
            "One service's live state and its latest log lines (not only errors), with a request to "
            "explain why it is in that state and what to do next."
        ),
    )
    async def triage_service(project: Project, service: Service, ctx: Context[Any, Any]) -> list[Message]:
        arguments = {"project": project[:100], "service": service[:100]}
        try:
            authorize(ctx, "triage_service", arguments)
            validate_services([service])
            ps = await ops.ps(project)
            mine = [s for s in ps.services if s.service == service]
            if not mine:
                have = ", ".join(sorted({s.service for s in ps.services})) or "none"
                raise InvalidInput(f"stack '{project}' has no service '{service}'; its services: {have}")
            has_container = any(s.container for s in mine)
            logs = (
                await ops.logs(project, services=[service], tail=SERVICE_TAIL, max_bytes=EVIDENCE_BYTES)
                if has_container
                else None
            )
        except GatewayError as exc:
            raise gateway_mcp_error(exc) from None
        if logs is None:
            evidence = "The service has no container, so it has no logs: it was never created, or was removed."
        elif logs.text:
            evidence = f"Its last {logs.lines} log lines, oldest first:\n```\n{logs.text}\n```"
        else:
            evidence = "Its container has written no log lines."
        text = (
            f'Triage the service "{service}" of the Docker Compose stack "{project}".\n\n'
            f"Its state at {_now()}:\n\n{_state_table(mine)}\n\n{evidence}\n\n"
            "Explain why the service is in this state, quoting the lines that show it. Then give the next "
            "step as one tool call (restart, up, logs with a since or grep, config, ...), and what to check "
            "afterwards to know it worked."
        )
        return [UserMessage(text)]
