"""The operations API: every compose operation the gateway offers, independent of MCP.

The MCP server calls it; the status panel calls it in-process in legacy mode. It is a thin
facade over three parts: the stack catalog (:mod:`gateway.catalog`), the reads
(:mod:`gateway.reads`) and the write path (:mod:`gateway.lifecycle`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .audit import AuditLog
from .catalog import StackCatalog
from .compose import ComposeCli, ComposeLocator, ProgressCallback
from .config import Settings
from .deploy import Deployer
from .dockercli import DockerCli
from .engine import Engine
from .guard import PolicyGuard
from .lifecycle import SERVICE_ACTIONS, Lifecycle, ServiceAction
from .logs import DEFAULT_BYTES, DEFAULT_TAIL
from .metrics import CommandExecutionMetrics, ControlPlane
from .models import ActionResult, ConfigResult, LogsResult, PsResult, StackList
from .planner import Planner
from .reads import Reads
from .swarm import SwarmBackend
from .versions import VersionStore

__all__ = ["ComposeOperations", "SERVICE_ACTIONS", "ServiceAction"]


class ComposeOperations:
    """Compose operations on the stacks under one stacks dir, plus running folder-less projects.

    Stacks whose compose file opts in to Docker Swarm run there, through the same operations.
    """

    def __init__(
        self,
        *,
        stacks_dir: Path,
        engine: Engine,
        cli: ComposeCli | Callable[[], ComposeCli],
        plane: ControlPlane,
        metrics: CommandExecutionMetrics | None = None,
        audit: AuditLog | None = None,
        self_project: str | None = None,
        guard: PolicyGuard | None = None,
        docker_bin: str | None = None,
    ) -> None:
        self.engine = engine
        self.plane = plane
        self.metrics = metrics or CommandExecutionMetrics()
        self.compose = ComposeLocator(cli)
        # Swarm stacks' docker CLI runs with the Compose CLI's (allowlisted) environment.
        swarm = SwarmBackend(engine, lambda: DockerCli.locate(docker_bin, self.compose.located().env))
        self.catalog = StackCatalog(stacks_dir, engine, self.compose, guard, swarm)
        self.reads = Reads(self.catalog, plane=plane, metrics=self.metrics)
        self.lifecycle = Lifecycle(
            self.catalog, plane=plane, metrics=self.metrics, audit=audit, self_project=self_project
        )
        # deploy, rollback and their reads; versions are kept in the stacks dir (see gateway.versions).
        self.planner = Planner(self.catalog, VersionStore(self.catalog.stacks_dir), plane=plane, metrics=self.metrics)
        self.deployer = Deployer(self.catalog, self.lifecycle, self.planner)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        plane: ControlPlane,
        metrics: CommandExecutionMetrics | None = None,
        audit: AuditLog | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ComposeOperations:
        """Build the operations from settings. The Compose CLI is located on first use, not here.

        ``environ`` is the gateway's environment; the Compose CLI sees only its allowlisted part
        (``PATH``, ``HOME``, the ``DOCKER_*`` connection variables and ``policy.pass_env``).
        """
        env = dict(os.environ if environ is None else environ)
        if settings.docker_host:
            env["DOCKER_HOST"] = settings.docker_host
        policy = settings.policy
        return cls(
            stacks_dir=settings.stacks_dir,
            engine=Engine(settings.docker_host, timeout=settings.docker_timeout),
            cli=lambda: ComposeCli.locate(settings.compose_bin, env, policy.pass_env),
            plane=plane,
            metrics=metrics,
            audit=audit,
            self_project=settings.self_project,
            guard=PolicyGuard(policy, docker_host=env.get("DOCKER_HOST")),
            docker_bin=settings.docker_bin,
        )

    @property
    def stacks_dir(self) -> Path:
        return self.catalog.stacks_dir

    @property
    def audit(self) -> AuditLog | None:
        return self.lifecycle.audit

    @property
    def self_project(self) -> str | None:
        return self.lifecycle.self_project

    @self_project.setter
    def self_project(self, value: str | None) -> None:
        self.lifecycle.self_project = value

    @property
    def cli(self) -> ComposeCli:
        """The Compose CLI, located now if needed (blocking).

        Raises:
            ComposeNotFound: no usable Compose v2 CLI.
        """
        return self.compose.located()

    def locate_cli(self) -> None:
        """Find the Compose CLI now, logging instead of raising: for a background warm-up at start."""
        self.compose.warm()

    def close(self) -> None:
        self.engine.close()

    # -- reads ----------------------------------------------------------------------------------

    async def list_stacks(self) -> StackList:
        """Every stack folder, plus running compose projects that have none (marked external)."""
        return await self.reads.list_stacks()

    async def ps(self, project: str) -> PsResult:
        """Every container of the stack, plus defined services that have none (state ``missing``)."""
        return await self.reads.ps(project)

    async def logs(
        self,
        project: str,
        *,
        services: list[str] | None = None,
        tail: int = DEFAULT_TAIL,
        since: str | None = None,
        grep: str | None = None,
        timestamps: bool = False,
        max_bytes: int = DEFAULT_BYTES,
    ) -> LogsResult:
        """The last ``tail`` lines of each selected container, merged in time order and bounded in bytes."""
        return await self.reads.logs(
            project, services=services, tail=tail, since=since, grep=grep, timestamps=timestamps, max_bytes=max_bytes
        )

    async def config(self, project: str) -> ConfigResult:
        """The stack's compose model as Compose validates and normalises it."""
        return await self.reads.config(project)

    # -- writes ---------------------------------------------------------------------------------

    async def up(
        self,
        project: str,
        *,
        services: list[str] | None = None,
        wait: bool = False,
        caller: str = "local",
        on_behalf_of: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> ActionResult:
        """Create and start the stack's services, detached; with ``wait``, until they are running/healthy."""
        return await self.lifecycle.up(
            project, services=services, wait=wait, caller=caller, on_behalf_of=on_behalf_of, progress=progress
        )

    async def down(
        self,
        project: str,
        *,
        volumes: bool = False,
        caller: str = "local",
        on_behalf_of: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> ActionResult:
        """Stop and remove the stack's containers and networks; named volumes are kept unless ``volumes``."""
        return await self.lifecycle.down(
            project, volumes=volumes, caller=caller, on_behalf_of=on_behalf_of, progress=progress
        )

    async def service_action(
        self,
        action: ServiceAction,
        project: str,
        *,
        services: list[str] | None = None,
        caller: str = "local",
        on_behalf_of: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> ActionResult:
        """restart, start or stop the stack's containers, or only those of ``services``."""
        return await self.lifecycle.service_action(
            action, project, services=services, caller=caller, on_behalf_of=on_behalf_of, progress=progress
        )

    def audit_refusal(
        self, tool: str, arguments: dict[str, Any], caller: str, reason: str, *, on_behalf_of: str | None = None
    ) -> None:
        """Record a call that was refused before it ran (scope, read-only, policy)."""
        self.lifecycle.audit_refusal(tool, arguments, caller, reason, on_behalf_of=on_behalf_of)
