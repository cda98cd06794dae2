"""The compose tools: list_stacks, ps, logs, config, and the lifecycle tools.

Each tool checks the caller's scope, calls the operations API and returns its pydantic model. A
failure is raised as a :class:`~gateway.errors.GatewayError`; the server turns it into an error
result (see :mod:`gateway.mcp.server`). New tool families live in modules of their own with a
``register_*(mcp, kit)`` function like the ones here.
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations
from pydantic import Field, Strict

from ..auth.principals import Principal
from ..compose.cli import ProgressCallback
from ..compose.lifecycle import ServiceAction
from ..deploy.confirm import Confirmations
from ..engine.logs import DEFAULT_BYTES, DEFAULT_TAIL, MAX_BYTES, MAX_TAIL
from ..fleet import Fleet
from ..idempotency import KEY_PATTERN, MAX_KEY_LENGTH
from ..models import ActionResult, ConfigResult, LogsResult, PsResult, StackList
from ..operations import ComposeOperations
from ..redact import REDACTOR
from .access import PersonScopes, authorize, principal_of
from .approvals import ApprovalArg, ApprovalGate
from .confirmation import (
    CONFIRM_DESCRIPTION,
    SERVICE_CONFIRMATION,
    Answer,
    ConfirmGate,
    DownAnswer,
    DownPending,
    Pending,
    UpAnswer,
    UpPending,
)
from .dashboard import PS_TOOL_META
from .hosts import LOCAL_HOST, HostArg, OneHost, on_host
from .notify import Notifier

__all__ = [
    "ToolKit",
    "Acting",
    "Project",
    "Services",
    "Confirm",
    "ApprovalArg",
    "IdempotencyKey",
    "StrictBool",
    "READ_ONLY",
    "write_annotations",
    "register_read_tools",
    "register_write_tools",
    "caller_of",
]

Project = Annotated[
    str,
    Field(description="Stack name as shown by list_stacks (lowercase letters, digits, '-', '_')", max_length=63),
]
Services = Annotated[
    list[str] | None,
    Field(description="Only these services (names from ps); omit for every service of the stack", max_length=100),
]
Confirm = Annotated[str | None, Field(description=CONFIRM_DESCRIPTION, max_length=64)]
# Read by the tools/call interceptor (gateway.mcp.tasks.calls), not by the tools' bodies.
IdempotencyKey = Annotated[
    str | None,
    Field(
        description=(
            "A string you choose for this change (up to 128 characters, e.g. a UUID). Sent again with the same "
            "arguments within 24 h, the call runs once: the repeat joins the running call or gets its recorded "
            "result. Use it whenever you may retry after a timeout. The same key with other arguments is refused"
        ),
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        pattern=KEY_PATTERN,
    ),
]
# A string is never a boolean or a number in a tool call: "true" or "5" is refused, not coerced.
StrictBool = Annotated[bool, Strict()]
StrictInt = Annotated[int, Strict()]

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)


def write_annotations(*, destructive: bool, idempotent: bool) -> ToolAnnotations:
    return ToolAnnotations(
        read_only_hint=False, destructive_hint=destructive, idempotent_hint=idempotent, open_world_hint=False
    )


def caller_of(ctx: Context) -> Principal:
    """Who is calling: the principal of the request's verified token (``LOCAL`` on stdio)."""
    return principal_of(ctx)


class Acting(TypedDict):
    """The keywords every write operation takes: who calls, the person it acts for, where events go."""

    caller: str
    on_behalf_of: str | None
    progress: ProgressCallback


class ToolKit:
    """What every tool family needs: the operations, the caller's scope check, progress, confirmations."""

    def __init__(
        self,
        ops: ComposeOperations,
        notifier: Notifier | None = None,
        confirmations: Confirmations | None = None,
        approvals: ApprovalGate | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self.ops = ops
        # Every host's operations; ``ops`` is the host local's (and the shared audit's).
        self.fleet = fleet or Fleet.single(ops)
        self.notifier = notifier
        self.gate = ConfirmGate(confirmations or Confirmations())
        self.people: PersonScopes | None = None
        # The calls that wait for a person, and the approvals given.
        self.approvals = approvals or ApprovalGate()
        self.approvals.notifier = notifier

    def authorize(self, ctx: Context, tool: str, arguments: dict[str, Any]) -> Principal:
        """The caller of this request, if its token's scope includes ``tool`` (see :func:`~.access.authorize`).

        Raises:
            PolicyViolation: out of scope (the refusal is audited).
            InvalidInput: a malformed ``on_behalf_of`` in the request's ``_meta`` (audited too).
        """
        return authorize(self.ops, ctx, tool, arguments, people=self.people).principal

    def progress(self, ctx: Context) -> ProgressCallback:
        """A callback that turns each Compose event into a progress notification and a log message."""
        count = 0
        notifier = self.notifier

        async def report(message: str) -> None:
            nonlocal count
            count += 1
            message = REDACTOR.redact(message)  # progress is a notification: no result middleware sees it
            await ctx.report_progress(count, None, message)
            if notifier is not None:
                await notifier.log_to_request(ctx.request_context, "info", "compose", message)

        return report

    async def cleared(
        self,
        ctx: Context,
        tool: str,
        arguments: dict[str, Any],
        pending: Pending,
        answer: Answer,
        confirm: str | None,
        *,
        shown: dict[str, Any] | None = None,
        approval: str | None = None,
    ) -> Acting:
        """What a write tool's body does before it acts: settle the confirmation, or the approval.

        The caller's scope was checked once, by the plan resolver that made ``pending`` (it runs
        before the body); the body acts as that caller. ``arguments`` are what a confirmation is
        bound to. Refusals' audit lines record ``shown`` instead when given (deploy's hide the file).

        Returns the operation's keywords: ``ops.up(project, ..., **acting)``.

        Raises:
            PolicyViolation: out of scope, a token that does not fit, or a person who declined.
            ConfirmationRequired: the policy asks for a confirmation this call does not carry.
            ApprovalRequired: the policy asks for a person's approval this call does not carry (yet).
            InvalidInput: a malformed ``on_behalf_of`` in the request's ``_meta``.
        """
        audited = arguments if shown is None else shown
        person = pending.person
        project = str(arguments["project"])

        def audit(reason: str) -> None:
            self.ops.audit_refusal(tool, audited, pending.caller, reason, on_behalf_of=person)

        if pending.approval:
            await self.approvals.settle(tool, arguments, pending, approval, audit=audit)
            return Acting(caller=pending.caller, on_behalf_of=person, progress=self.progress(ctx))
        await self.gate.settle(
            tool,
            arguments,
            pending,
            answer,
            confirm,
            state=lambda: self.fleet.get(arguments.get("host")).planner.state(project, tool, arguments),
            audit=audit,
        )
        return Acting(caller=pending.caller, on_behalf_of=person, progress=self.progress(ctx))


def register_read_tools(mcp: MCPServer, kit: ToolKit) -> None:
    """list_stacks, ps, logs and config: allowed in read-only mode."""

    @mcp.tool(
        title="List stacks",
        annotations=READ_ONLY,
        description=(
            "List every compose stack on every host: folders under the stacks dir, and running compose "
            "projects without a folder (external: they can be read, restarted, stopped and brought down, "
            "but not brought up). Shows how many containers each has and how many run, and its target: "
            "compose, or swarm for a Docker Swarm stack. Each stack names its host (pass it to the other "
            "tools; local needs no mention); `hosts` says which hosts answered. Call this first."
        ),
    )
    async def list_stacks(ctx: Context, host: OneHost = None) -> StackList:
        who = kit.authorize(ctx, "list_stacks", {} if host is None else {"host": host})
        listing = await kit.fleet.list_stacks(host)
        if who.scopes is not None:  # a token narrowed to stacks sees only those
            shown = [s for s in listing.stacks if who.may_act("ps", s.name, s.host)]
            # and only the hosts it has a scope on: another host's name and address are not its business.
            listing = StackList(stacks=shown, hosts=[h for h in listing.hosts if who.scopes.reaches_host(h.name)])
        return listing

    @mcp.tool(
        title="Service status",
        annotations=READ_ONLY,
        # Hosts with MCP Apps render the result as the stack view (see gateway.mcp.dashboard).
        meta=PS_TOOL_META,
        description=(
            "Show each service of a stack: container name, state (running, exited, missing = defined but "
            "has no container, ...), health (healthy/unhealthy/starting, or null without a healthcheck), "
            "exit code, published ports, image and start time. Use it to see what runs and what does not. "
            "For a swarm stack: one entry per task, with its task state, node, desired_state and error."
        ),
    )
    async def ps(project: Project, ctx: Context, host: HostArg = LOCAL_HOST) -> PsResult:
        kit.authorize(ctx, "ps", on_host({"project": project}, host))
        result = await kit.fleet.get(host).ps(project)
        return result.model_copy(update={"host": host})

    @mcp.tool(
        title="Read logs",
        annotations=READ_ONLY,
        description=(
            "Read recent log lines of a stack, newest last, each prefixed with its service. Takes the last "
            f"`tail` lines of each container (default {DEFAULT_TAIL}, at most {MAX_TAIL}), optionally only "
            "after `since` (RFC 3339, relative like 10m, or Unix seconds) and only lines matching `grep`. "
            "The answer is capped in bytes, keeping the newest lines; `truncated` says when older ones were "
            "dropped. Narrow with grep/since rather than raising tail."
        ),
    )
    async def logs(
        project: Project,
        ctx: Context,
        services: Services = None,
        tail: Annotated[
            StrictInt, Field(ge=1, le=MAX_TAIL, description="Lines per container, from the end")
        ] = DEFAULT_TAIL,
        since: Annotated[
            str | None,
            Field(description="Only newer lines: RFC 3339 time, relative (30s, 10m, 2h, 1d) or Unix seconds"),
        ] = None,
        grep: Annotated[str | None, Field(description="Only lines matching this regular expression")] = None,
        timestamps: Annotated[StrictBool, Field(description="Prefix each line with its RFC 3339 timestamp")] = False,
        max_bytes: Annotated[
            StrictInt, Field(ge=1024, le=MAX_BYTES, description="Cap on the answer's size; newest lines are kept")
        ] = DEFAULT_BYTES,
        host: HostArg = LOCAL_HOST,
    ) -> LogsResult:
        kit.authorize(ctx, "logs", on_host({"project": project}, host))
        result = await kit.fleet.get(host).logs(
            project, services=services, tail=tail, since=since, grep=grep, timestamps=timestamps, max_bytes=max_bytes
        )
        return result.model_copy(update={"host": host})

    @mcp.tool(
        title="Compose config",
        annotations=READ_ONLY,
        description=(
            "Show a stack's compose model as Docker Compose validates and normalises it (JSON): services, "
            "images, ports, volumes, networks, with variables interpolated. Fails with Compose's own error "
            "when the compose file is malformed. Needs the stack's folder (not for external stacks)."
        ),
    )
    async def config(project: Project, ctx: Context, host: HostArg = LOCAL_HOST) -> ConfigResult:
        kit.authorize(ctx, "config", on_host({"project": project}, host))
        return await kit.fleet.get(host).config(project)


# restart, start and stop differ only in the Compose verb, their annotations and their words.
_SERVICE_TOOLS: dict[ServiceAction, tuple[str, bool, str]] = {
    "restart": (
        "Restart",
        False,
        "Restart a stack's running containers, or only the given services (docker compose restart).",
    ),
    "start": (
        "Start",
        True,
        "Start a stack's existing, stopped containers (docker compose start). Creates nothing: use up.",
    ),
    "stop": ("Stop", True, "Stop a stack's running containers without removing them (docker compose stop)."),
}


def register_write_tools(mcp: MCPServer, kit: ToolKit) -> None:
    """up, down, restart, start and stop: not registered in read-only mode."""

    @mcp.tool(
        title="Bring up",
        annotations=write_annotations(destructive=False, idempotent=True),
        description=(
            "Create and start a stack's services in the background (docker compose up -d), recreating "
            "containers whose configuration changed. With `wait`, return only when services are running "
            "and healthy. Sends a progress notification per Compose event. Needs the stack's folder. "
            "A stack whose compose file has `x-compose-agent: {target: swarm}` is deployed to Docker Swarm."
        ),
    )
    async def up(
        project: Project,
        ctx: Context,
        pending: UpPending,
        answer: UpAnswer,
        services: Services = None,
        wait: Annotated[
            StrictBool, Field(description="Wait until services are running/healthy before returning")
        ] = False,
        confirm: Confirm = None,
        approval: ApprovalArg = None,
        idempotency_key: IdempotencyKey = None,
        host: HostArg = LOCAL_HOST,
    ) -> ActionResult:
        arguments = on_host({"project": project, "services": services, "wait": wait}, host)
        acting = await kit.cleared(ctx, "up", arguments, pending, answer, confirm, approval=approval)
        result = await kit.fleet.writable(host, "up").up(project, services=services, wait=wait, **acting)
        return result.model_copy(update={"host": host})

    @mcp.tool(
        title="Bring down",
        annotations=write_annotations(destructive=True, idempotent=True),
        description=(
            "Stop and remove a stack's containers and networks (docker compose down). Named volumes, and "
            "so the data, are kept unless `volumes` is true. Works for external stacks too."
        ),
    )
    async def down(
        project: Project,
        ctx: Context,
        pending: DownPending,
        answer: DownAnswer,
        volumes: Annotated[
            StrictBool, Field(description="Also delete the stack's named volumes and their data")
        ] = False,
        confirm: Confirm = None,
        approval: ApprovalArg = None,
        idempotency_key: IdempotencyKey = None,
        host: HostArg = LOCAL_HOST,
    ) -> ActionResult:
        arguments = on_host({"project": project, "volumes": volumes}, host)
        acting = await kit.cleared(ctx, "down", arguments, pending, answer, confirm, approval=approval)
        result = await kit.fleet.writable(host, "down").down(project, volumes=volumes, **acting)
        return result.model_copy(update={"host": host})

    for action, (title, idempotent, description) in _SERVICE_TOOLS.items():
        _register_service_tool(mcp, kit, action, title, idempotent, description)


def _register_service_tool(
    mcp: MCPServer, kit: ToolKit, action: ServiceAction, title: str, idempotent: bool, description: str
) -> None:
    async def service_tool(
        project: Project,
        ctx: Context,
        pending: Pending,
        answer: Answer,
        services: Services = None,
        confirm: Confirm = None,
        approval: ApprovalArg = None,
        idempotency_key: IdempotencyKey = None,
        host: HostArg = LOCAL_HOST,
    ) -> ActionResult:
        arguments = on_host({"project": project, "services": services}, host)
        acting = await kit.cleared(ctx, action, arguments, pending, answer, confirm, approval=approval)
        ops = kit.fleet.writable(host, action)
        result = await ops.service_action(action, project, services=services, **acting)
        return result.model_copy(update={"host": host})

    # One body for three tools, each with its own planner: the SDK reads these annotations to resolve them.
    service_tool.__annotations__ = {**service_tool.__annotations__, **SERVICE_CONFIRMATION[action]}

    mcp.tool(
        name=action,
        title=title,
        annotations=write_annotations(destructive=False, idempotent=idempotent),
        description=description,
    )(service_tool)
