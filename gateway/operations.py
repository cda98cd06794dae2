"""The operations API: every compose operation the gateway offers, independent of MCP.

The MCP server calls it; the status panel calls it in-process in legacy mode. It is a thin
facade over three parts: the stack catalog (:mod:`gateway.catalog`), the reads
(:mod:`gateway.reads`) and the write path (:mod:`gateway.compose.lifecycle`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

from .audit import AuditLog
from .auth.stacksecrets import StackSecrets
from .auth.vault import VaultClient
from .catalog import StackCatalog
from .compose.cli import ComposeCli
from .compose.lifecycle import SERVICE_ACTIONS, Lifecycle, ServiceAction
from .compose.locate import ComposeLocator
from .compose.runfile import RunFiles
from .config import Settings
from .deploy.deployer import Deployer
from .deploy.planner import Planner
from .deploy.versions import VersionStore
from .engine.client import Engine
from .engine.endpoint import EngineEndpoint
from .engine.owners import EngineOwners
from .hosts import HostConfig
from .metrics import CommandExecutionMetrics, ControlPlane
from .policy.guard import PolicyGuard
from .policy.rules import Policy
from .reads import Reads
from .secretrefs import SECRETS_KEY_FILE
from .swarm.backend import SwarmBackend
from .swarm.dockercli import DockerCli

__all__ = ["ComposeOperations", "SERVICE_ACTIONS", "ServiceAction"]


class ComposeOperations:
    """Compose operations on the stacks under one stacks dir, plus running folder-less projects.

    Stacks whose compose file opts in to Docker Swarm run there, through the same operations.

    The reads ``list_stacks``, ``ps``, ``logs`` and ``config`` are :class:`~gateway.reads.Reads`'
    methods; the writes ``up``, ``down`` and ``service_action`` (restart, start, stop), and
    ``audit_refusal``, are :class:`~gateway.compose.lifecycle.Lifecycle`'s. ``planner`` and ``deployer``
    hold plan, versions, deploy and rollback.
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
        state_dir: Path | None = None,
        secrets: StackSecrets | None = None,
    ) -> None:
        """``state_dir`` keeps the judged models Compose runs (see :mod:`gateway.compose.runfile`);
        without one, a private folder of this process's (so a restart forgets them). ``secrets`` reads
        the secrets stacks reference (:mod:`gateway.secretrefs`); without it, no Vault is configured."""
        self.engine = engine
        self.plane = plane
        self.metrics = metrics or CommandExecutionMetrics()
        self.compose = ComposeLocator(cli)
        # Swarm stacks' docker CLI runs with the Compose CLI's (allowlisted) environment.
        swarm = SwarmBackend(engine, lambda: self._docker_cli(docker_bin))
        guard = guard or PolicyGuard(Policy())
        # Ownership by the engine's labels: a stack names only what it created (issue 20).
        owners = EngineOwners(engine)
        guard.owners = guard.owners or owners.owner
        guard.projects = guard.projects or owners.projects
        self.catalog = StackCatalog(stacks_dir, engine, self.compose, guard, swarm)
        state_dir = state_dir or Path(tempfile.mkdtemp(prefix="compose-agent-"))
        runs = RunFiles(state_dir, self.catalog.stacks_dir)
        self.secrets = secrets or StackSecrets()
        if self.secrets.key_file is None:
            self.secrets.key_file = state_dir / SECRETS_KEY_FILE
        self.reads = Reads(self.catalog, plane=plane, metrics=self.metrics)
        self.lifecycle = Lifecycle(
            self.catalog,
            plane=plane,
            metrics=self.metrics,
            audit=audit,
            self_project=None,
            runs=runs,
            secrets=self.secrets,
        )
        self.self_project = self_project if self_project is not None else guard.self_project
        # deploy, rollback and their reads; versions are kept in the stacks dir (see gateway.deploy.versions).
        self.planner = Planner(
            self.catalog,
            VersionStore(self.catalog.stacks_dir),
            runs,
            plane=plane,
            metrics=self.metrics,
            secrets=self.secrets,
        )
        self.deployer = Deployer(self.catalog, self.lifecycle, self.planner)
        # The operations are the parts' own methods, bound here: their signatures and docstrings
        # are written once, where the work is done, and a call takes no extra hop.
        self.list_stacks = self.reads.list_stacks
        self.ps = self.reads.ps
        self.logs = self.reads.logs
        self.config = self.reads.config
        self.up = self.lifecycle.up
        self.down = self.lifecycle.down
        self.service_action = self.lifecycle.service_action
        self.audit_refusal = self.lifecycle.audit_refusal

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        plane: ControlPlane,
        metrics: CommandExecutionMetrics | None = None,
        audit: AuditLog | None = None,
        environ: Mapping[str, str] | None = None,
        host: tuple[str, HostConfig] | None = None,
    ) -> ComposeOperations:
        """Build the operations from settings. The Compose CLI is located on first use, not here.

        ``environ`` is the gateway's environment; the Compose CLI sees only its allowlisted part
        (``PATH``, ``HOME``, the ``DOCKER_*`` connection variables and ``policy.pass_env``), with the
        connection variables set to the engine's own (:meth:`~gateway.engine.client.Engine.cli_environment`).

        ``host`` is a configured host (its name and :class:`~gateway.hosts.HostConfig`): its
        engine and stacks dir instead of the gateway's own, and its judged models kept apart.

        Raises:
            ConfigError: the engine's endpoint cannot be used (a TLS folder without ``ca.pem``, an
                ``ssh://`` host with no ssh client).
        """
        gateway_env = os.environ if environ is None else environ
        if host is None:
            endpoint = EngineEndpoint.from_environ(
                gateway_env,
                docker_host=settings.docker_host,
                tls_verify=settings.docker_tls_verify,
                cert_path=settings.docker_cert_path,
                timeout=settings.docker_timeout,
            )
            name, stacks_dir, state_dir = "local", settings.stacks_dir, settings.state_dir
            self_project = settings.self_project
        else:
            name, config = host
            endpoint = EngineEndpoint(
                config.docker_host,
                tls_verify=config.tls_verify,
                cert_path=config.cert_path,
                timeout=settings.docker_timeout,
            )
            # The gateway runs on none of the fleet's other engines: no project there is its own.
            stacks_dir, self_project = config.stacks_dir, None
            state_dir = settings.state_dir / "hosts" / name
        engine = Engine(endpoint, name=name)
        # Compose and the docker CLI reach the very engine the gateway reads, over the same transport.
        env = engine.cli_environment(gateway_env)
        policy = settings.policy
        return cls(
            stacks_dir=stacks_dir,
            engine=engine,
            cli=lambda: ComposeCli.locate(settings.compose_bin, env, policy.pass_env, budget=settings.compose_budget),
            plane=plane,
            metrics=metrics,
            audit=audit,
            self_project=self_project,
            guard=PolicyGuard(policy, docker_host=env.get("DOCKER_HOST")),
            docker_bin=settings.docker_bin,
            state_dir=state_dir,
            # Vault for the stacks' secrets: the very Vault (and token) the gateway's own tokens come from.
            secrets=StackSecrets(partial(VaultClient.from_settings, settings) if settings.vault_address else None),
        )

    def _docker_cli(self, docker_bin: str | None) -> DockerCli:
        compose = self.compose.located()
        return DockerCli.locate(docker_bin, compose.env, budget=compose.budget)

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
        # Refused as a target of writes, and as a namespace no stack's resources may enter.
        self.lifecycle.self_project = value
        self.catalog.guard.self_project = value

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
