"""The stacks of the other hosts as resources: ``compose://stacks/{host}/{project}/...``.

The local host's stacks keep their URIs (``compose://stacks/{project}/status``); a stack of another
host has one more segment, its host. The same three resources (compose file, status, logs), read
under the same scopes, narrowed to that host's stack (``compose:read:edge/site``). Only a gateway
with more than one host registers these templates, so a single engine's listing is unchanged.

Remote stacks are listed in ``resources/list`` from the fleet's bounded listing; no change
notifications are sent for them (the gateway follows its own engine's events only).
"""

from __future__ import annotations

import json
import re

from anyio import to_thread
from mcp.server.mcpserver.resources import ResourceSecurity
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, Resource

from ..auth.principals import Principal
from ..engine.logs import DEFAULT_BYTES, DEFAULT_TAIL, MAX_TAIL
from ..errors import GatewayError, InvalidInput
from ..fleet import LOCAL_HOST, Fleet
from ..stacks import validate_project_name, validate_services
from .resources import StackResources, _read_compose_file, _tail, gateway_mcp_error

__all__ = [
    "HOST_COMPOSE_FILE_TEMPLATE",
    "HOST_LOGS_TEMPLATE",
    "HOST_STATUS_TEMPLATE",
    "HOST_TEMPLATES",
    "host_stack_resources",
    "host_stack_of_uri",
    "register_host_resources",
]

HOST_COMPOSE_FILE_TEMPLATE = "compose://stacks/{host}/{project}/compose.yaml"
HOST_STATUS_TEMPLATE = "compose://stacks/{host}/{project}/status"
HOST_LOGS_TEMPLATE = "compose://stacks/{host}/{project}/logs{?service,tail,since,grep}"
HOST_TEMPLATES = {HOST_COMPOSE_FILE_TEMPLATE: "config", HOST_STATUS_TEMPLATE: "ps", HOST_LOGS_TEMPLATE: "logs"}

_HOST_URI_RE = re.compile(r"compose://stacks/([^/?#]+)/([^/?#]+)/(compose\.yaml|status|logs)(\?[^#]*)?")
_TOOL_FOR_PART = {"compose.yaml": "config", "status": "ps", "logs": "logs"}


def host_stack_of_uri(uri: str) -> tuple[str, str, str] | None:
    """(tool, host, project) of a remote stack's URI; None for any other URI."""
    match = _HOST_URI_RE.fullmatch(uri)
    if match is None:
        return None
    return _TOOL_FOR_PART[match.group(3)], match.group(1), match.group(2)


def _uri(host: str, project: str, part: str) -> str:
    return f"compose://stacks/{host}/{project}/{part}"


async def host_stack_resources(fleet: Fleet, principal: Principal) -> list[Resource]:
    """The resources of every remote host's stacks the caller may read (hosts that do not answer: none)."""
    listing = await fleet.list_stacks()
    resources = []
    for stack in listing.stacks:
        if stack.host == LOCAL_HOST:
            continue
        where = f"stack '{stack.name}' on the host '{stack.host}'"
        if not stack.external and principal.may_act("config", stack.name, stack.host):
            resources.append(
                Resource(
                    uri=_uri(stack.host, stack.name, "compose.yaml"),
                    name=f"{stack.host}/{stack.name}/compose.yaml",
                    title=f"{stack.host}/{stack.name}: compose file",
                    description=f"The compose file of {where}, as written in its folder",
                    mime_type="application/yaml",
                )
            )
        if principal.may_act("ps", stack.name, stack.host):
            resources.append(
                Resource(
                    uri=_uri(stack.host, stack.name, "status"),
                    name=f"{stack.host}/{stack.name}/status",
                    title=f"{stack.host}/{stack.name}: status",
                    description=f"Live state of every service of {where} (the ps tool's result, as JSON)",
                    mime_type="application/json",
                )
            )
    return resources


def register_host_resources(mcp: StackResources, fleet: Fleet) -> None:
    """Serve the remote hosts' stacks as resources on ``mcp`` (a fleet of one: nothing to add)."""
    if len(fleet) < 2:
        return
    mcp.remote_resources = lambda principal: host_stack_resources(fleet, principal)

    def ops_of(host: str, project: str, uri: str) -> Fleet:
        try:
            validate_project_name(project)
            if host == LOCAL_HOST:
                raise InvalidInput(f"the local host's stacks are compose://stacks/{project}/...; drop '{host}/'")
            fleet.host(host)
        except GatewayError as exc:
            raise gateway_mcp_error(exc, uri=uri) from None
        return fleet

    @mcp.resource(
        HOST_COMPOSE_FILE_TEMPLATE,
        name="host_compose_file",
        title="Compose file (host)",
        description="The compose file of a stack on another host, as written in its folder on this gateway.",
        mime_type="application/yaml",
    )
    async def compose_file(host: str, project: str) -> str:
        uri = _uri(host, project, "compose.yaml")
        ops = ops_of(host, project, uri).get(host)
        try:
            stack = await ops.catalog.resolve(project, need_folder=True)
            assert stack.folder is not None and stack.compose_file is not None
            return await to_thread.run_sync(_read_compose_file, stack.folder, stack.compose_file)
        except GatewayError as exc:
            raise gateway_mcp_error(exc, uri=uri) from None
        except OSError as exc:
            raise MCPError(code=INTERNAL_ERROR, message=f"cannot read the compose file of '{project}': {exc}") from None

    @mcp.resource(
        HOST_STATUS_TEMPLATE,
        name="host_status",
        title="Stack status (host)",
        description="Live state of every service of a stack on another host, as the ps tool returns it (JSON).",
        mime_type="application/json",
    )
    async def status(host: str, project: str) -> str:
        uri = _uri(host, project, "status")
        try:
            result = await ops_of(host, project, uri).get(host).ps(project)
        except GatewayError as exc:
            raise gateway_mcp_error(exc, uri=uri) from None
        return json.dumps(result.model_copy(update={"host": host}).model_dump(mode="json"), indent=2)

    @mcp.resource(
        HOST_LOGS_TEMPLATE,
        name="host_logs",
        title="Recent logs (host)",
        description=(
            f"Recent log lines of a stack on another host, as the logs resource of a local stack "
            f"(tail default {DEFAULT_TAIL}, at most {MAX_TAIL}; service, since, grep; capped at {DEFAULT_BYTES} bytes)."
        ),
        mime_type="text/plain",
        security=ResourceSecurity(exempt_params=frozenset({"grep", "since"})),
    )
    async def logs(
        host: str,
        project: str,
        service: str | None = None,
        tail: str | None = None,
        since: str | None = None,
        grep: str | None = None,
    ) -> str:
        uri = _uri(host, project, "logs")
        ops = ops_of(host, project, uri).get(host)
        try:
            services = validate_services([service]) if service else None
            result = await ops.logs(project, services=services, tail=_tail(tail), since=since, grep=grep)
        except GatewayError as exc:
            raise gateway_mcp_error(exc, uri=uri) from None
        if result.truncated:
            return f"[{result.dropped_lines} older lines dropped to fit {DEFAULT_BYTES} bytes]\n{result.text}"
        return result.text
