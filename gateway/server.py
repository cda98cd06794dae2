"""The MCP server: compose operations as tools, with scopes, audit and progress.

Transports live elsewhere (:mod:`gateway.app` for HTTP; stdio via the SDK). This module knows the
operations API and MCP, and nothing about Docker.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar, cast

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import AnyHttpUrl, Field

from . import __version__
from .auth import GatewayTokenVerifier, Principal, principal_from_access_token
from .errors import GatewayError, PolicyViolation
from .logs import DEFAULT_BYTES, DEFAULT_TAIL, MAX_BYTES, MAX_TAIL
from .models import ActionResult, ConfigResult, LogsResult, PsResult, StackList
from .operations import ComposeOperations
from .schema import flatten_schema

__all__ = ["build_server", "INSTRUCTIONS"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

INSTRUCTIONS = """\
Manage Docker Compose stacks on this host. A stack is addressed by its name (the compose project
name, e.g. "shop"), never by a path. Start with list_stacks, then ps to see each service's state
and health, logs to read recent output (use grep and since to narrow it), and up/restart/start/
stop/down to change state. down removes containers (named volumes are kept unless volumes=true).
Errors say what to do next; read them."""

Project = Annotated[
    str,
    Field(description="Stack name as shown by list_stacks (lowercase letters, digits, '-', '_')", max_length=63),
]
Services = Annotated[
    list[str] | None,
    Field(description="Only these services (names from ps); omit for every service of the stack", max_length=100),
]

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)


def _write(*, destructive: bool, idempotent: bool) -> ToolAnnotations:
    return ToolAnnotations(
        read_only_hint=False, destructive_hint=destructive, idempotent_hint=idempotent, open_world_hint=False
    )


def _access_token(ctx: Context) -> AccessToken | None:
    """The verified token of this request: from the HTTP request the message came in on, else the context var."""
    request = getattr(ctx.request_context, "request", None)
    user = request.scope.get("user") if request is not None and hasattr(request, "scope") else None
    if isinstance(user, AuthenticatedUser):
        return user.access_token
    return get_access_token()


def build_server(
    ops: ComposeOperations,
    *,
    read_only: bool = False,
    token_verifier: GatewayTokenVerifier | None = None,
    issuer_url: str = "http://127.0.0.1:8765",
) -> MCPServer:
    """An MCPServer exposing the compose tools over ``ops``.

    With ``token_verifier``, HTTP transports require a bearer token and every call is checked against
    the token's scopes. Without one (stdio), the caller is the local user who started the process.
    """
    auth = AuthSettings(issuer_url=AnyHttpUrl(issuer_url), resource_server_url=None) if token_verifier else None
    mcp: MCPServer = MCPServer(
        "compose-agent",
        instructions=INSTRUCTIONS,
        version=__version__,
        token_verifier=token_verifier,
        auth=auth,
        log_level="WARNING",
    )

    def authorize(ctx: Context, tool: str, arguments: dict[str, Any]) -> Principal:
        principal = principal_from_access_token(_access_token(ctx))
        if not principal.may_call(tool):
            reason = f"the token of '{principal.name}' may not call '{tool}'; use a token whose scope includes it"
            ops.audit_refusal(tool, arguments, principal.name, reason)
            raise PolicyViolation(reason)
        return principal

    async def run(
        ctx: Context, tool: str, arguments: dict[str, Any], operation: Callable[[Principal], Awaitable[T]]
    ) -> T:
        """Check the caller's scope, run the operation, and turn a failure into an error result."""
        try:
            return await operation(authorize(ctx, tool, arguments))
        except GatewayError as exc:
            # A failed operation is a tool result the agent can read and act on, not a protocol error.
            # The SDK passes a returned CallToolResult through untouched, whatever the tool's return type.
            return cast(T, error_result(exc))

    def progress_reporter(ctx: Context) -> Callable[[str], Awaitable[None]]:
        count = 0

        async def report(message: str) -> None:
            nonlocal count
            count += 1
            await ctx.report_progress(count, None, message)

        return report

    @mcp.tool(
        title="List stacks",
        annotations=READ_ONLY,
        description=(
            "List every compose stack on this host: folders under the stacks dir, and running compose "
            "projects without a folder (external: they can be read, restarted, stopped and brought down, "
            "but not brought up). Shows how many containers each has and how many run. Call this first."
        ),
    )
    async def list_stacks(ctx: Context) -> StackList:
        return await run(ctx, "list_stacks", {}, lambda _: ops.list_stacks())

    @mcp.tool(
        title="Service status",
        annotations=READ_ONLY,
        description=(
            "Show each service of a stack: container name, state (running, exited, missing = defined but "
            "has no container, ...), health (healthy/unhealthy/starting, or null without a healthcheck), "
            "exit code, published ports, image and start time. Use it to see what runs and what does not."
        ),
    )
    async def ps(project: Project, ctx: Context) -> PsResult:
        return await run(ctx, "ps", {"project": project}, lambda _: ops.ps(project))

    @mcp.tool(
        title="Read logs",
        annotations=READ_ONLY,
        description=(
            "Read recent log lines of a stack, newest last, each prefixed with its service. Takes the last "
            f"`tail` lines of each container (default {DEFAULT_TAIL}, at most {MAX_TAIL}), optionally only "
            "after `since` (RFC 3339 or relative like 10m, 2h) and only lines matching the `grep` regex. "
            "The answer is capped in bytes, keeping the newest lines; `truncated` says when older ones were "
            "dropped. Narrow with grep/since rather than raising tail."
        ),
    )
    async def logs(
        project: Project,
        ctx: Context,
        services: Services = None,
        tail: Annotated[int, Field(ge=1, le=MAX_TAIL, description="Lines per container, from the end")] = DEFAULT_TAIL,
        since: Annotated[
            str | None, Field(description="Only newer lines: RFC 3339 time or relative (30s, 10m, 2h, 1d)")
        ] = None,
        grep: Annotated[str | None, Field(description="Only lines matching this regular expression")] = None,
        timestamps: Annotated[bool, Field(description="Prefix each line with its RFC 3339 timestamp")] = False,
        max_bytes: Annotated[
            int, Field(ge=1024, le=MAX_BYTES, description="Cap on the answer's size; newest lines are kept")
        ] = DEFAULT_BYTES,
    ) -> LogsResult:
        return await run(
            ctx,
            "logs",
            {"project": project},
            lambda _: ops.logs(
                project,
                services=services,
                tail=tail,
                since=since,
                grep=grep,
                timestamps=timestamps,
                max_bytes=max_bytes,
            ),
        )

    @mcp.tool(
        title="Compose config",
        annotations=READ_ONLY,
        description=(
            "Show a stack's compose model as Docker Compose validates and normalises it (JSON): services, "
            "images, ports, volumes, networks, with variables interpolated. Fails with Compose's own error "
            "when the compose file is malformed. Needs the stack's folder (not for external stacks)."
        ),
    )
    async def config(project: Project, ctx: Context) -> ConfigResult:
        return await run(ctx, "config", {"project": project}, lambda _: ops.config(project))

    if read_only:
        return _flatten_output_schemas(mcp)

    @mcp.tool(
        title="Bring up",
        annotations=_write(destructive=False, idempotent=True),
        description=(
            "Create and start a stack's services in the background (docker compose up -d), recreating "
            "containers whose configuration changed. With `wait`, return only when services are running "
            "and healthy. Sends a progress notification per Compose event. Needs the stack's folder."
        ),
    )
    async def up(
        project: Project,
        ctx: Context,
        services: Services = None,
        wait: Annotated[bool, Field(description="Wait until services are running/healthy before returning")] = False,
    ) -> ActionResult:
        return await run(
            ctx,
            "up",
            {"project": project, "services": services},
            lambda who: ops.up(project, services=services, wait=wait, caller=who.name, progress=progress_reporter(ctx)),
        )

    @mcp.tool(
        title="Bring down",
        annotations=_write(destructive=True, idempotent=True),
        description=(
            "Stop and remove a stack's containers and networks (docker compose down). Named volumes, and "
            "so the data, are kept unless `volumes` is true. Works for external stacks too."
        ),
    )
    async def down(
        project: Project,
        ctx: Context,
        volumes: Annotated[bool, Field(description="Also delete the stack's named volumes and their data")] = False,
    ) -> ActionResult:
        return await run(
            ctx,
            "down",
            {"project": project, "volumes": volumes},
            lambda who: ops.down(project, volumes=volumes, caller=who.name, progress=progress_reporter(ctx)),
        )

    @mcp.tool(
        title="Restart",
        annotations=_write(destructive=False, idempotent=False),
        description="Restart a stack's running containers, or only the given services (docker compose restart).",
    )
    async def restart(project: Project, ctx: Context, services: Services = None) -> ActionResult:
        return await run(
            ctx,
            "restart",
            {"project": project, "services": services},
            lambda who: ops.restart(project, services=services, caller=who.name, progress=progress_reporter(ctx)),
        )

    @mcp.tool(
        title="Start",
        annotations=_write(destructive=False, idempotent=True),
        description="Start a stack's existing, stopped containers (docker compose start). Creates nothing: use up.",
    )
    async def start(project: Project, ctx: Context, services: Services = None) -> ActionResult:
        return await run(
            ctx,
            "start",
            {"project": project, "services": services},
            lambda who: ops.start(project, services=services, caller=who.name, progress=progress_reporter(ctx)),
        )

    @mcp.tool(
        title="Stop",
        annotations=_write(destructive=False, idempotent=True),
        description="Stop a stack's running containers without removing them (docker compose stop).",
    )
    async def stop(project: Project, ctx: Context, services: Services = None) -> ActionResult:
        return await run(
            ctx,
            "stop",
            {"project": project, "services": services},
            lambda who: ops.stop(project, services=services, caller=who.name, progress=progress_reporter(ctx)),
        )

    return _flatten_output_schemas(mcp)


def error_result(exc: GatewayError) -> CallToolResult:
    """A failed call: the message for people and agents, and its kind for programs (the status panel).

    Clients do not check error results against the output schema, so ``structured_content`` may
    carry ``{"error": kind, "message": ...}`` here.
    """
    message = str(exc)
    return CallToolResult(
        content=[TextContent(type="text", text=message)],
        structured_content={"error": exc.kind, "message": message},
        is_error=True,
    )


def _flatten_output_schemas(mcp: MCPServer) -> MCPServer:
    """Publish flat output schemas: the same documents validate, and clients check them twice as fast.

    The SDK reads each tool's metadata live, so replacing the published schema after registration
    is enough; results are still validated server-side against the pydantic model.
    """
    for tool in mcp._tool_manager.list_tools():  # no public accessor for a tool's metadata
        metadata = tool.fn_metadata
        if metadata.output_schema is not None:
            metadata.output_schema = flatten_schema(metadata.output_schema)
    return mcp
