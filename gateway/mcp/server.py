"""The MCP server: the compose tools, their error results, and what the server publishes.

Transports live elsewhere (:mod:`gateway.mcp.app` for HTTP; stdio via the SDK). This module knows the
operations API and MCP, and nothing about Docker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.types import CallToolResult, InputRequiredResult, TextContent, Tool
from pydantic import AnyHttpUrl, ValidationError

from .. import __version__
from ..audit import bounded_arguments, on_behalf_of
from ..auth.principals import DEPLOY_TOOLS, LOCAL, WRITE_TOOLS
from ..auth.scopes import APPROVE_TOOLS
from ..deploy.confirm import Confirmations
from ..errors import (
    APPROVAL_META_KEY,
    APPROVAL_URL_META_KEY,
    CONFIRM_META_KEY,
    ERROR_META_KEY,
    SCOPE_META_KEY,
    ApprovalRequired,
    ConfirmationRequired,
    GatewayError,
    InsufficientScope,
    InvalidInput,
    PolicyViolation,
)
from ..fleet import Fleet
from ..operations import ComposeOperations
from .access import PersonScopes
from .approval_tools import register_approvals
from .approvals import ApprovalGate
from .completion import register_completion
from .confirmation import audit_view
from .dashboard import stack_app
from .deploy_tools import register_deploy_reads, register_deploy_tools
from .host_resources import register_host_resources
from .notify import Notifier
from .prompts import register_prompts
from .redaction import redacting_middleware
from .resources import StackResources, register_resources
from .schema import flatten_schema
from .tasks import TaskSupport
from .tools import ToolKit, caller_of, register_read_tools, register_write_tools

__all__ = ["build_server", "error_result", "GatewayServer", "INSTRUCTIONS"]

logger = logging.getLogger(__name__)

INSTRUCTIONS = """\
Manage Docker Compose stacks on this host. A stack is addressed by its name (the compose project
name, e.g. "shop"), never by a path. Start with list_stacks, then ps to see each service's state
and health, logs to read recent output (use grep and since to narrow it), and up/restart/start/
stop/down to change state. down removes containers (named volumes are kept unless volumes=true).
To add or change a stack, send its whole compose file to deploy (plan shows first what it would
do; versions and rollback undo it). Errors say what to do next; read them. A write that may outlast
your wait can run as a task; send idempotency_key with a write you may retry, and it runs once."""
# Said only by a gateway that drives more than its own engine.
FLEET_INSTRUCTIONS = """
This gateway drives several Docker engines (hosts). list_stacks lists every host's stacks, each with
its host; pass that host to every other tool (omitted: local). A host marked read_only refuses writes."""


# (tool, bounded arguments, caller, reason): how a refusal at the protocol edge is recorded.
class RefusalAudit(Protocol):
    """How a refusal at the protocol edge is recorded (``ComposeOperations.audit_refusal``)."""

    def __call__(
        self, tool: str, arguments: dict[str, Any], caller: str, reason: str, *, on_behalf_of: str | None = None
    ) -> None: ...


# JSON Schema names of the Python types a caller can send, for messages about a wrong type.
_JSON_TYPES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array"}


class GatewayServer(StackResources):
    """An MCPServer whose failed calls are error results every client can read.

    A tool raises :class:`GatewayError`; the result then carries the message as text content and
    no ``structuredContent``, because the TypeScript SDK's clients (the Inspector, Claude Desktop,
    Cursor, VS Code) validate ``structuredContent`` against the tool's output schema even in an
    error result. The machine-readable kind travels in ``_meta``.
    """

    def __init__(self, *args: Any, audit_refusal: RefusalAudit | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flat_schemas: dict[str, dict[str, Any]] = {}
        self._audit_refusal = audit_refusal
        self.read_only = False
        # What the tools share; resolvers reach it through their context's server.
        self.kit: ToolKit | None = None
        # Tasks and idempotency keys; the entry point runs ``tasks.run`` for the server's lifetime.
        self.tasks: TaskSupport | None = None

    async def list_tools(self) -> list[Tool]:
        """The tools, with flat output schemas: the same documents validate, and clients check them faster."""
        tools = await super().list_tools()
        for tool in tools:
            if tool.output_schema is not None:
                flat = self._flat_schemas.get(tool.name)
                if flat is None:
                    flat = self._flat_schemas[tool.name] = flatten_schema(tool.output_schema)
                tool.output_schema = flat
        return tools

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context | None = None
    ) -> CallToolResult | InputRequiredResult:
        """Run a tool; a call refused before its tool ran (unknown tool, invalid arguments) is audited here.

        This is the one place every tools/call passes, so no refusal depends on a tool remembering
        to audit it: a write tool called in read-only mode (it is not registered), or a call the
        input schema refuses (a 64-character name, 1,000 services), leaves its line too.
        """
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, GatewayError):
                return error_result(cause)
            if isinstance(cause, ValidationError):
                refused = InvalidInput(describe_invalid_arguments(name, cause))
                self._refused(name, arguments, context, str(refused))
                return error_result(refused)
            if cause is None and name not in {tool.name for tool in await self.list_tools()}:
                if self.read_only and (name in WRITE_TOOLS or name in DEPLOY_TOOLS or name in APPROVE_TOOLS):
                    # The gateway's own answer, not the SDK's "Unknown tool": the caller learns why.
                    offered = ", ".join(sorted(tool.name for tool in await self.list_tools()))
                    read_only = PolicyViolation(
                        f"'{name}' changes stacks, and this gateway runs in --read-only mode; it offers only {offered}"
                    )
                    self._refused(name, arguments, context, str(read_only))
                    return error_result(read_only)
                self._refused(name, arguments, context, f"no tool named {name[:100]!r}")
            raise

    def _refused(self, name: str, arguments: dict[str, Any], context: Context | None, reason: str) -> None:
        if self._audit_refusal is None:
            return
        principal = caller_of(context) if context is not None else LOCAL
        caller = principal.name
        try:
            # An OAuth token's person is the token's, whatever the request's _meta claims.
            person = principal.person or (on_behalf_of(context.request_context.meta) if context is not None else None)
        except (InvalidInput, ValueError):
            # A malformed name (refused with the call anyway), or no request to read it from.
            person = None
        shown = bounded_arguments(audit_view(arguments))
        self._audit_refusal(name[:100], shown, caller, reason, on_behalf_of=person)


def describe_invalid_arguments(tool: str, error: ValidationError) -> str:
    """Which arguments were refused and what each should be; never the values themselves."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "arguments"
        message = item["msg"]
        given = _JSON_TYPES.get(type(item.get("input")))
        if item["type"].endswith("_type") and given is not None:
            message += f", got {given}"
        problems.append(f"'{where}': {message}")
    return f"invalid arguments for '{tool}': " + "; ".join(problems)


def error_result(exc: GatewayError) -> CallToolResult:
    """A failed call: the message for people and agents as text; its kind for programs in ``_meta``.

    A call that needs confirming also carries its token there, beside the ``confirm="..."`` in the text;
    one that waits for a person's approval, the approval's id (and its page in the panel).
    """
    meta: dict[str, Any] = {ERROR_META_KEY: exc.kind}
    if isinstance(exc, ConfirmationRequired):
        meta[CONFIRM_META_KEY] = exc.token
    if isinstance(exc, InsufficientScope):
        meta[SCOPE_META_KEY] = exc.scope
    if isinstance(exc, ApprovalRequired):
        meta[APPROVAL_META_KEY] = exc.approval
        if exc.url is not None:
            meta[APPROVAL_URL_META_KEY] = exc.url
    return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True, _meta=meta)


def build_server(
    ops: ComposeOperations,
    *,
    read_only: bool = False,
    token_verifier: TokenVerifier | None = None,
    issuer_url: str = "http://127.0.0.1:8765",
    resource_server_url: str | None = None,
    people: PersonScopes | None = None,
    notifier: Notifier | None = None,
    confirm: Iterable[str] = (),
    approvals: ApprovalGate | None = None,
    state_dir: Path | None = None,
    fleet: Fleet | None = None,
) -> GatewayServer:
    """An MCP server exposing the compose tools over ``ops``, and the stacks as resources and prompts.

    With ``token_verifier``, HTTP transports require a bearer token and every call is checked against
    the token's scopes. Without one (stdio), the caller is the local user who started the process.
    In ``read_only`` mode the tools that change anything are not registered at all. The tools in
    ``confirm`` (the operator's ``policy.confirm``) act only once confirmed; the calls ``approvals``
    lists (``policy.approve``) only once a person approved them (without it: none, and the approvals
    given live in this process only).

    ``notifier`` carries stack changes and log messages to hosts; the entry point runs it (and a
    :class:`~gateway.mcp.watch.StackWatcher` feeding it) for the server's lifetime. Without one, the
    server makes its own, which serves subscriptions and log levels but hears of no changes.

    Tasks and idempotency keys are kept in ``state_dir`` (in memory without one); the entry
    point runs ``server.tasks.run`` beside the server, where detached calls run.

    ``fleet`` holds the hosts beside ``ops`` (its ``local``); without one, ``ops`` is the only host.

    Raises:
        StateUnavailable: the state folder's tasks or keys cannot be read.
    """
    auth = None
    if token_verifier is not None:
        # With a public URL, tokens are bound to this resource (RFC 8707) and a 401 points at
        # its metadata (RFC 9728); the static tokens are stamped with it by the OAuth verifier.
        resource = AnyHttpUrl(resource_server_url) if resource_server_url else None
        auth = AuthSettings(
            issuer_url=AnyHttpUrl(issuer_url),
            resource_server_url=resource,
            validate_token_resource=True if resource else None,
        )
    notifier = notifier or Notifier(InMemorySubscriptionBus())
    tasks = TaskSupport(ops, state_dir, frozenset() if read_only else WRITE_TOOLS | DEPLOY_TOOLS, fleet)
    mcp = GatewayServer(
        "compose-agent",
        audit_refusal=ops.audit_refusal,
        instructions=INSTRUCTIONS + (FLEET_INSTRUCTIONS if fleet is not None and len(fleet) > 1 else ""),
        version=__version__,
        token_verifier=token_verifier,
        auth=auth,
        log_level="WARNING",
        extensions=[stack_app(), tasks.extension],
        subscriptions=notifier.bus,
    )
    mcp.read_only = read_only
    mcp.tasks = tasks
    # First of the gateway's own, so outermost: every answer passes it last, as it leaves (issue 28).
    mcp.middleware.append(redacting_middleware())
    mcp.middleware.append(tasks.middleware)
    kit = mcp.kit = ToolKit(ops, notifier, Confirmations(confirm), approvals, fleet)
    kit.people = people  # the panel's person acts within their own grants
    register_read_tools(mcp, kit)
    register_deploy_reads(mcp, kit)
    if not read_only:
        register_write_tools(mcp, kit)
        register_deploy_tools(mcp, kit)
    # The approvals resources always; approve and reject change something, so not read-only.
    register_approvals(mcp, kit, tools=not read_only)
    register_resources(mcp, ops, notifier)
    register_host_resources(mcp, kit.fleet)  # a fleet of one adds nothing
    mcp.approvals = kit.approvals
    register_prompts(mcp, ops)
    register_completion(mcp, ops, kit.fleet)
    notifier.install(mcp.middleware)
    return mcp
