"""Argument completion: stack names for ``project``, and that stack's services for ``service``.

For another host's resources, ``host`` completes to the hosts of the fleet, and ``project``
and ``service`` to that host's stacks and services.

Completion answers for the gateway's own prompts and resource templates; any other reference gets
an empty answer, as the protocol asks. Names are shown only to callers whose scope could list
them: ``list_stacks`` for hosts and stacks, ``ps`` for services; and to a token narrowed to some
stacks (an OAuth person's grants), only the hosts, stacks and services ``list_stacks`` and ``ps``
would show it.
"""

from __future__ import annotations

import logging

from anyio import to_thread
from mcp.server.mcpserver import MCPServer
from mcp_types import Completion, CompletionArgument, CompletionContext, PromptReference, ResourceTemplateReference

from ..engine.containers import SERVICE_LABEL
from ..errors import GatewayError
from ..fleet import LOCAL_HOST, Fleet
from ..operations import ComposeOperations
from ..stacks import validate_project_name
from .access import current_principal, remember_requests
from .host_resources import HOST_COMPOSE_FILE_TEMPLATE, HOST_TEMPLATES
from .prompts import PROMPT_NAMES
from .resources import COMPOSE_FILE_TEMPLATE, LOGS_TEMPLATE, STATUS_TEMPLATE, stack_names

__all__ = ["register_completion", "MAX_VALUES"]

logger = logging.getLogger(__name__)

# The protocol caps one answer at 100 values.
MAX_VALUES = 100
_TEMPLATES = (COMPOSE_FILE_TEMPLATE, STATUS_TEMPLATE, LOGS_TEMPLATE, *HOST_TEMPLATES)


def _answer(candidates: list[str], prefix: str) -> Completion:
    # Prefix matches first, then names that merely contain what was typed.
    lowered = prefix.lower()
    starts = [c for c in candidates if c.lower().startswith(lowered)]
    contains = [c for c in candidates if lowered in c.lower() and c not in starts]
    matches = starts + contains
    return Completion(values=matches[:MAX_VALUES], total=len(matches), has_more=len(matches) > MAX_VALUES)


def _empty() -> Completion:
    return Completion(values=[], total=0, has_more=False)


async def service_names(ops: ComposeOperations, project: str) -> list[str]:
    """The services a stack defines or has containers for, without counting a ``ps``."""
    names: set[str] = set()
    try:
        containers = await to_thread.run_sync(ops.engine.project_containers, project)
    except GatewayError:
        containers = []
    names.update(str(c["Labels"].get(SERVICE_LABEL)) for c in containers if c["Labels"].get(SERVICE_LABEL))
    stack = ops.catalog.folder(project)
    if stack is not None:
        names.update(await ops.catalog.defined_services(stack))
    return sorted(names)


def register_completion(mcp: MCPServer, ops: ComposeOperations, fleet: Fleet | None = None) -> None:
    """Serve ``completion/complete`` on ``mcp`` (and so declare the completions capability)."""
    hosts = fleet or Fleet.single(ops)
    remember_requests(mcp)  # the completion function is not handed its request: the caller comes from it

    # MCPServer.completion() carries no annotations, hence the ignore; the function it takes is typed.
    @mcp.completion()  # type: ignore[no-untyped-call, untyped-decorator]
    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion:
        if isinstance(ref, PromptReference):
            if ref.name not in PROMPT_NAMES:
                return _empty()
        elif ref.uri not in _TEMPLATES:
            return _empty()
        principal = current_principal()
        name, value = argument.name, argument.value
        chosen = (context.arguments if context else None) or {}
        scopes = principal.scopes
        if name == "host" and principal.may_call("list_stacks"):
            names = [host for host in hosts.names if host != LOCAL_HOST]
            return _answer([host for host in names if scopes is None or scopes.reaches_host(host)], value)
        remote = isinstance(ref, ResourceTemplateReference)  # a template names its host; a prompt is local
        host = chosen.get("host") if remote else None
        try:
            on = hosts.get(host) if remote else ops
        except GatewayError:
            return _empty()  # no such host: nothing to complete from
        if name == "project" and principal.may_call("list_stacks"):
            folders_only = not isinstance(ref, PromptReference) and ref.uri in (
                COMPOSE_FILE_TEMPLATE,
                HOST_COMPOSE_FILE_TEMPLATE,
            )
            stacks = await stack_names(on)
            # A narrowed token completes only the stacks list_stacks shows it.
            shown = [
                n for n, external in stacks if not (folders_only and external) and principal.may_act("ps", n, host)
            ]
            return _answer(shown, value)
        if name == "service" and principal.may_call("ps"):
            project = chosen.get("project", "")
            try:
                validate_project_name(project)
            except GatewayError:
                return _empty()  # no project chosen yet: nothing to complete from
            if not principal.may_act("ps", project, host):
                return _empty()  # another stack's services are as much its business as its ps
            return _answer(await service_names(on, project), value)
        return _empty()
