"""Stacks as MCP resources: each stack's compose file, its live state and its recent logs.

URIs name stacks, never paths: ``compose://stacks/{project}/compose.yaml`` is the stack's own
compose file (whatever its file name), ``compose://stacks/{project}/status`` its ``ps`` state and
``compose://stacks/{project}/logs`` its recent log lines, under the same limits as the ``logs``
tool. A URI that does not match one of these templates with a valid stack name reads nothing.

Each read is covered by the scope of the tool that shows the same thing (``config``, ``ps``,
``logs``), and listing shows a caller only what it may read. Both are done in the MCPServer's own
public seams (:class:`StackResources` overrides ``list_resources``, ``list_resource_templates`` and
``read_resource``), which every resources request of every transport passes through.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from anyio import to_thread
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.resources import ResourceSecurity
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    EmptyResult,
    InputRequiredResult,
    Resource,
    ResourceTemplate,
    SubscribeRequestParams,
    UnsubscribeRequestParams,
)
from pydantic import AnyUrl

from ..auth.principals import Principal
from ..engine.containers import PROJECT_LABEL
from ..engine.logs import DEFAULT_BYTES, DEFAULT_TAIL, MAX_TAIL
from ..errors import GatewayError, InvalidInput
from ..folders import NotRegular, read_regular
from ..operations import ComposeOperations
from ..stacks import validate_project_name, validate_services
from .access import current_principal, principal_of_request, remember_requests, require_scope
from .approval_tools import pending_resources
from .approvals import ApprovalGate, is_approval_uri
from .notify import MAX_SUBSCRIPTIONS, Notifier

__all__ = [
    "COMPOSE_FILE_TEMPLATE",
    "STATUS_TEMPLATE",
    "LOGS_TEMPLATE",
    "APP_URI_PREFIX",
    "compose_file_uri",
    "status_uri",
    "logs_uri",
    "tool_for_uri",
    "is_stack_uri",
    "register_resources",
    "StackResources",
    "gateway_mcp_error",
    "stack_names",
    "MAX_COMPOSE_FILE_BYTES",
]

logger = logging.getLogger(__name__)

COMPOSE_FILE_TEMPLATE = "compose://stacks/{project}/compose.yaml"
STATUS_TEMPLATE = "compose://stacks/{project}/status"
LOGS_TEMPLATE = "compose://stacks/{project}/logs{?service,tail,since,grep}"
# The MCP App's pages; reading them is covered by the scope of ps, whose result they render.
APP_URI_PREFIX = "ui://compose-agent/"
# A compose file is a few kilobytes; anything this large is not one, and is not sent.
MAX_COMPOSE_FILE_BYTES = 1024 * 1024

_STACK_URI_RE = re.compile(r"compose://stacks/([^/?#]*)/(compose\.yaml|status|logs)(\?[^#]*)?")
# Another host's stack: compose://stacks/{host}/{project}/... (see gateway.mcp.host_resources).
_HOST_STACK_URI_RE = re.compile(r"compose://stacks/[^/?#]+/[^/?#]+/(compose\.yaml|status|logs)(\?[^#]*)?")
_TOOL_FOR_PART = {"compose.yaml": "config", "status": "ps", "logs": "logs"}
_TOOL_FOR_TEMPLATE = {COMPOSE_FILE_TEMPLATE: "config", STATUS_TEMPLATE: "ps", LOGS_TEMPLATE: "logs"}
# Error kinds that are the caller's to fix, answered as invalid params rather than a server fault.
_CALLER_KINDS = frozenset({"invalid_input", "stack_not_found", "policy_violation"})


def compose_file_uri(project: str) -> str:
    return f"compose://stacks/{project}/compose.yaml"


def status_uri(project: str) -> str:
    return f"compose://stacks/{project}/status"


def logs_uri(project: str) -> str:
    return f"compose://stacks/{project}/logs"


def is_stack_uri(uri: str) -> bool:
    """Whether ``uri`` names one of a stack's resources, with a valid stack name."""
    match = _STACK_URI_RE.fullmatch(uri)
    if match is None:
        return False
    try:
        validate_project_name(match.group(1))
    except InvalidInput:
        return False
    return True


def tool_for_uri(uri: str) -> str | None:
    """The tool whose scope covers reading ``uri``; None for a URI that is none of the gateway's."""
    if uri.startswith(APP_URI_PREFIX):
        return "ps"
    match = _STACK_URI_RE.fullmatch(uri)
    if match is None and (remote := _HOST_STACK_URI_RE.fullmatch(uri)) is not None:
        return _TOOL_FOR_PART[remote.group(1)]  # read under the same tool's scope, on its host
    return _TOOL_FOR_PART[match.group(2)] if match else None


def gateway_mcp_error(exc: GatewayError, **data: Any) -> MCPError:
    """A gateway error as a JSON-RPC error: its message for people, its kind for programs."""
    code = INVALID_PARAMS if exc.kind in _CALLER_KINDS else INTERNAL_ERROR
    return MCPError(code=code, message=str(exc), data={"kind": exc.kind, **data})


class StackResources(MCPServer):
    """An MCPServer whose resources follow the caller's scope, with every stack's resources listed.

    ``resources/list``, ``resources/templates/list`` and ``resources/read`` reach these public
    methods on every transport; the caller is the one of the request being served. A tool that
    reads a resource (``ctx.read_resource``) passes the same check.
    """

    #: The operations behind the stacks' resources; set by :func:`register_resources`.
    stack_ops: ComposeOperations | None = None
    #: The approvals whose pending ones are listed too; set by ``build_server``.
    approvals: ApprovalGate | None = None
    #: The other hosts' stacks' resources the caller may read; set by ``register_host_resources``.
    remote_resources: Callable[[Principal], Awaitable[list[Resource]]] | None = None

    async def list_resources(self) -> list[Resource]:
        """The resources the caller may read: the registered ones, and each stack's."""
        principal = current_principal()
        listed = [r for r in await super().list_resources() if _may_read(principal, str(r.uri))]
        if self.stack_ops is not None and principal.may_call("list_stacks"):
            for name, external in await stack_names(self.stack_ops):
                listed.extend(_stack_resources(name, external, principal))
            if self.remote_resources is not None:
                listed.extend(await self.remote_resources(principal))
        if self.approvals is not None:
            listed.extend(await pending_resources(self.approvals, principal))
        return listed

    async def list_resource_templates(self) -> list[ResourceTemplate]:
        """The templates whose resources the caller may read."""
        principal = current_principal()
        return [
            t
            for t in await super().list_resource_templates()
            if principal.may_call(_TOOL_FOR_TEMPLATE.get(t.uri_template, "list_stacks"))
        ]

    async def read_resource(
        self, uri: AnyUrl | str, context: Context[Any, Any] | None = None
    ) -> Iterable[ReadResourceContents] | InputRequiredResult:
        """Read ``uri``, refused (and audited) as the tool whose scope covers it would be."""
        if self.stack_ops is not None:
            check_read(self.stack_ops, current_principal(), str(uri), "resources/read")
        return await super().read_resource(uri, context)


def check_read(ops: ComposeOperations, principal: Principal, uri: str, what: str) -> None:
    """Refuse (and audit) ``what`` on ``uri`` unless the caller may call the tool that covers it.

    Raises:
        MCPError: the caller's scope does not cover ``uri`` (INVALID_PARAMS, kind ``policy_violation``).
    """
    tool = tool_for_uri(uri)
    if tool is None:
        return  # not one of the gateway's URIs: reading it finds nothing
    try:
        require_scope(ops, principal, tool, what, {"uri": uri[:200]})
    except GatewayError as exc:
        raise gateway_mcp_error(exc, uri=uri[:200]) from None


async def stack_names(ops: ComposeOperations) -> list[tuple[str, bool]]:
    """(name, external) for every stack: folders, plus compose projects running without one.

    Listing is not a command the gateway executes, so unlike ``list_stacks`` it is not counted.
    """
    folders = await to_thread.run_sync(ops.catalog.folders)
    try:
        containers = await to_thread.run_sync(ops.engine.project_containers, None)
    except GatewayError as exc:
        logger.warning("listing resources without running projects: %s", exc)
        containers = []
    running = {c["Labels"][PROJECT_LABEL] for c in containers}
    return [(name, name not in folders) for name in sorted(set(folders) | running)]


def _stack_resources(name: str, external: bool, principal: Principal) -> list[Resource]:
    resources = []
    if not external and principal.may_act("config", name):  # may_act: per stack
        resources.append(
            Resource(
                uri=compose_file_uri(name),
                name=f"{name}/compose.yaml",
                title=f"{name}: compose file",
                description=f"The compose file of stack '{name}', as written in its folder",
                mime_type="application/yaml",
            )
        )
    if principal.may_act("ps", name):
        resources.append(
            Resource(
                uri=status_uri(name),
                name=f"{name}/status",
                title=f"{name}: status",
                description=f"Live state of every service of stack '{name}' (the ps tool's result, as JSON)",
                mime_type="application/json",
            )
        )
    return resources


def _read_compose_file(folder: Path, compose_file: Path) -> str:
    """The stack's compose file, refusing one that resolves outside the stack's own folder."""
    resolved = compose_file.resolve(strict=True)
    if not resolved.is_relative_to(folder.resolve(strict=True)):
        raise InvalidInput(
            f"the compose file of stack '{folder.name}' links outside its folder; it is not served as a resource"
        )
    try:
        # A regular file with one name, or nothing opened: no FIFO to hang on, no device, no hard link.
        data = read_regular(resolved, limit=MAX_COMPOSE_FILE_BYTES)
    except NotRegular as exc:
        raise InvalidInput(f"the compose file of stack '{folder.name}' is {exc.strerror}; it is not served") from None
    if len(data) > MAX_COMPOSE_FILE_BYTES:
        raise InvalidInput(
            f"the compose file of stack '{folder.name}' is over {MAX_COMPOSE_FILE_BYTES} bytes, the most that is served"
        )
    return data.decode("utf-8", errors="replace")


def _tail(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_TAIL
    if not value.isdigit() or not 1 <= int(value) <= MAX_TAIL:
        raise InvalidInput(f"tail must be a whole number from 1 to {MAX_TAIL}, got {value[:20]!r}")
    return int(value)


def register_resources(mcp: StackResources, ops: ComposeOperations, notifier: Notifier | None = None) -> None:
    """Serve the stacks as resources on ``mcp``, and (with ``notifier``) subscriptions to them."""
    mcp.stack_ops = ops
    remember_requests(mcp)  # list_resources() is not handed its request: the caller comes from it

    @mcp.resource(
        COMPOSE_FILE_TEMPLATE,
        name="compose_file",
        title="Compose file",
        description=(
            "The compose file of a stack, exactly as written in its folder (whatever its file name: "
            "compose.yaml, docker-compose.yml, ...). Stacks running without a folder have none."
        ),
        mime_type="application/yaml",
    )
    async def compose_file(project: str) -> str:
        try:
            stack = await ops.catalog.resolve(project, need_folder=True)
            assert stack.folder is not None and stack.compose_file is not None
            return await to_thread.run_sync(_read_compose_file, stack.folder, stack.compose_file)
        except GatewayError as exc:
            raise gateway_mcp_error(exc, uri=compose_file_uri(project)) from None
        except OSError as exc:
            raise MCPError(code=INTERNAL_ERROR, message=f"cannot read the compose file of '{project}': {exc}") from None

    @mcp.resource(
        STATUS_TEMPLATE,
        name="status",
        title="Stack status",
        description=(
            "Live state of every service of a stack, as the ps tool returns it (JSON): state, health, "
            "exit code, ports, image, start time. Subscribe to hear when it changes."
        ),
        mime_type="application/json",
    )
    async def status(project: str) -> str:
        try:
            result = await ops.ps(project)
        except GatewayError as exc:
            raise gateway_mcp_error(exc, uri=status_uri(project)) from None
        return json.dumps(result.model_dump(mode="json"), indent=2)

    @mcp.resource(
        LOGS_TEMPLATE,
        name="logs",
        title="Recent logs",
        description=(
            f"Recent log lines of a stack, newest last, each prefixed with its service: the last `tail` "
            f"lines per container (default {DEFAULT_TAIL}, at most {MAX_TAIL}), optionally of one `service`, "
            f"after `since` (10m, 2h, RFC 3339) and matching the `grep` regex; capped at {DEFAULT_BYTES} bytes, "
            "keeping the newest lines. The same limits as the logs tool."
        ),
        mime_type="text/plain",
        # grep and since are never used as paths, and a pattern may well start with '/' or hold '..'.
        security=ResourceSecurity(exempt_params=frozenset({"grep", "since"})),
    )
    async def logs(
        project: str,
        service: str | None = None,
        tail: str | None = None,
        since: str | None = None,
        grep: str | None = None,
    ) -> str:
        try:
            services = validate_services([service]) if service else None
            result = await ops.logs(project, services=services, tail=_tail(tail), since=since, grep=grep)
        except GatewayError as exc:
            raise gateway_mcp_error(exc, uri=logs_uri(project)) from None
        if result.truncated:
            return f"[{result.dropped_lines} older lines dropped to fit {DEFAULT_BYTES} bytes]\n{result.text}"
        return result.text

    if notifier is None:
        return

    async def subscribe(ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        uri = str(params.uri)
        if not is_stack_uri(uri) and not uri.startswith(APP_URI_PREFIX) and not is_approval_uri(uri):
            raise MCPError(
                code=INVALID_PARAMS,
                message=(
                    f"nothing to subscribe to at {uri[:100]!r}: subscribe to compose://stacks/<stack>/status "
                    "or compose://approvals[/<id>]"
                ),
            )
        check_read(ops, principal_of_request(ctx), uri, "resources/subscribe")
        if not notifier.subscribe(ctx.session, uri):
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"this session already follows {MAX_SUBSCRIPTIONS} resources; unsubscribe from some first",
            )
        return EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        notifier.unsubscribe(ctx.session, str(params.uri))
        return EmptyResult()

    # Handshake-era methods: MCPServer has no public seam for them, so the notifier's middleware answers.
    notifier.serve("resources/subscribe", SubscribeRequestParams, subscribe)
    notifier.serve("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)


def _may_read(principal: Principal, uri: str) -> bool:
    tool = tool_for_uri(uri)
    return tool is None or principal.may_call(tool)
