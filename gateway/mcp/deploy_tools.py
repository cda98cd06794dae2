"""The deploy tools: plan and versions (reads), deploy and rollback (writes, a scope of their own).

See :mod:`gateway.deploy.deployer` for what they do and :mod:`gateway.mcp.confirmation` for their confirmation.
"""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field, Strict

from ..models import DeployResult, PlanResult, VersionList
from ..policy.candidate import MAX_COMPOSE_BYTES, MAX_ENV_NAMES
from .confirmation import (
    DeployAnswer,
    DeployPending,
    RollbackAnswer,
    RollbackPending,
    deploy_audit_arguments,
)
from .hosts import LOCAL_HOST, HostArg, on_host
from .tools import (
    READ_ONLY,
    ApprovalArg,
    Confirm,
    IdempotencyKey,
    Project,
    StrictBool,
    ToolKit,
    write_annotations,
)

__all__ = ["register_deploy_reads", "register_deploy_tools"]

ComposeYaml = Annotated[
    str,
    Field(
        description=(
            "The whole compose file, as YAML text. Relative paths in it resolve in the stack's own folder. "
            f"At most {MAX_COMPOSE_BYTES // 1024} KiB."
        ),
        min_length=1,
        max_length=MAX_COMPOSE_BYTES,
    ),
]
Env = Annotated[
    dict[str, str] | None,
    Field(
        description=(
            "Variables for the stack's .env (NAME: value, one line each; not COMPOSE_* or DOCKER_*). "
            "Replaces the .env; omit to keep the one the stack has. Values are never shown back."
        ),
        max_length=MAX_ENV_NAMES,
    ),
]
Version = Annotated[
    int | None,
    Strict(),
    Field(ge=1, description="A version number from the versions tool; omit for the one before the current"),
]
Wait = Annotated[StrictBool, Field(description="Wait until services are running/healthy before returning")]


def register_deploy_reads(mcp: MCPServer, kit: ToolKit) -> None:
    """plan and versions: read-only, so also offered in read-only mode."""

    @mcp.tool(
        title="Plan",
        annotations=READ_ONLY,
        description=(
            "Say what `up` would do to each service of a stack now, or after deploying `compose_yaml` "
            "(and `env`): create, recreate, start, remove or unchanged, with the reason (from Compose's own "
            "dry run and the containers' config hashes; for a swarm stack, from the running service specs). "
            "Also gives the policy guard's verdict and, under "
            "`down`, the containers and volumes `down` would take. Changes nothing."
        ),
    )
    async def plan(
        project: Project,
        ctx: Context,
        compose_yaml: Annotated[
            str | None, Field(max_length=MAX_COMPOSE_BYTES, description="A compose file to plan")
        ] = None,
        env: Env = None,
        host: HostArg = LOCAL_HOST,
    ) -> PlanResult:
        kit.authorize(ctx, "plan", on_host({"project": project}, host))
        return await kit.fleet.get(host).planner.plan(project, compose_yaml, env)

    @mcp.tool(
        title="Versions",
        annotations=READ_ONLY,
        description=(
            "List the kept versions of a stack's compose file (each deploy adds one; a file found edited by "
            "hand is kept as one before it is replaced): number, time, SHA-256, who, and which is current. "
            "rollback takes one of these numbers."
        ),
    )
    async def versions(project: Project, ctx: Context, host: HostArg = LOCAL_HOST) -> VersionList:
        kit.authorize(ctx, "versions", on_host({"project": project}, host))
        return await kit.fleet.get(host).planner.versions(project)


def register_deploy_tools(mcp: MCPServer, kit: ToolKit) -> None:
    """deploy and rollback: not registered in read-only mode."""

    @mcp.tool(
        title="Deploy",
        annotations=write_annotations(destructive=True, idempotent=True),
        description=(
            "Create or update a stack from a compose file: Compose validates it and the policy guard judges "
            "it first (a refusal or an invalid file changes nothing), then it is kept as the next numbered "
            "version, written into the stack's folder atomically, and brought up (recreating only the "
            "services whose configuration changed). Returns the version, what changed per service, and "
            "Compose's events. Use plan first to see what it would do; rollback undoes it."
        ),
    )
    async def deploy(
        project: Project,
        compose_yaml: ComposeYaml,
        ctx: Context,
        pending: DeployPending,
        answer: DeployAnswer,
        env: Env = None,
        wait: Wait = False,
        confirm: Confirm = None,
        approval: ApprovalArg = None,
        idempotency_key: IdempotencyKey = None,
        host: HostArg = LOCAL_HOST,
    ) -> DeployResult:
        arguments = on_host({"project": project, "compose_yaml": compose_yaml, "env": env, "wait": wait}, host)
        shown = on_host(deploy_audit_arguments(project, compose_yaml), host)
        acting = await kit.cleared(ctx, "deploy", arguments, pending, answer, confirm, shown=shown, approval=approval)
        deployer = kit.fleet.writable(host, "deploy").deployer
        result = await deployer.deploy(project, compose_yaml, env=env, wait=wait, **acting)
        return result.model_copy(update={"host": host})

    @mcp.tool(
        title="Roll back",
        annotations=write_annotations(destructive=True, idempotent=False),
        description=(
            "Bring back an earlier version of a stack's compose file and .env (the one before the current, "
            "or `version` from the versions tool), after the same validation and policy check as deploy, "
            "and bring it up. Returns the version now on disk and what changed."
        ),
    )
    async def rollback(
        project: Project,
        ctx: Context,
        pending: RollbackPending,
        answer: RollbackAnswer,
        version: Version = None,
        wait: Wait = False,
        confirm: Confirm = None,
        approval: ApprovalArg = None,
        idempotency_key: IdempotencyKey = None,
        host: HostArg = LOCAL_HOST,
    ) -> DeployResult:
        arguments = on_host({"project": project, "version": version, "wait": wait}, host)
        acting = await kit.cleared(ctx, "rollback", arguments, pending, answer, confirm, approval=approval)
        result = await kit.fleet.writable(host, "rollback").deployer.rollback(project, version, wait=wait, **acting)
        return result.model_copy(update={"host": host})
