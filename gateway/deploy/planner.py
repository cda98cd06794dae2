"""Plans and the other reads of the deploy family: plan, versions, and what a confirmation shows.

Nothing here changes a stack. A plan of a compose file an agent sent reads it from a scratch folder
(see :mod:`gateway.policy.candidate`), after the policy guard has checked its file references: Compose
reads what a file references while loading it, so a refused reference is never loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anyio import to_thread

from ..catalog import StackCatalog
from ..compose.cli import ComposeCli
from ..engine.containers import SERVICE_LABEL
from ..errors import ComposeFailed, GatewayError
from ..metrics import CommandExecutionMetrics, ControlPlane
from ..models import DownRisk, PlanResult, Verdict, VersionInfo, VersionList
from ..policy.candidate import (
    Candidate,
    candidate_for,
    config_hashes,
    describe_failure,
    dry_run_up,
    rejected,
    render_env,
    stack_of,
    validate_compose_yaml,
    validate_env,
    validated,
)
from ..stacks import validate_project_name
from ..swarm.plan import plan_swarm  # swarm stacks' plans (issue 26)
from .plan import build_actions, down_risk, state_fingerprint
from .versions import Snapshot, VersionStore

__all__ = ["Planner"]


class Planner:
    """The reads of the deploy family over the stacks of one catalog."""

    def __init__(
        self, catalog: StackCatalog, store: VersionStore, *, plane: ControlPlane, metrics: CommandExecutionMetrics
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.plane = plane
        self.metrics = metrics

    async def versions(self, project: str) -> VersionList:
        """The kept versions of a stack, oldest first."""
        validate_project_name(project)
        metas, current = await to_thread.run_sync(lambda: (self.store.history(project), self.store.current(project)))
        if not metas:
            await self.catalog.resolve(project)  # an unknown stack is an error, a never-deployed one an empty list
        return VersionList(
            project=project,
            current=current,
            versions=[
                VersionInfo(
                    version=m.version,
                    created=m.created,
                    sha256=m.sha256,
                    source=m.source,
                    caller=m.caller,
                    current=m.version == current,
                )
                for m in metas
            ],
        )

    async def state(self, project: str) -> str:
        """A digest of the stack's files and containers, which a confirmation token is bound to."""
        validate_project_name(project)
        existing = await to_thread.run_sync(VersionStore.on_disk, self.catalog.stacks_dir / project)
        containers = await to_thread.run_sync(self.catalog.engine.project_containers, project)
        if not containers:
            # A swarm stack (issue 26): its services' versions, which every update, scale or restart bumps.
            services = await to_thread.run_sync(self.catalog.swarm.api.services, project)
            containers = [{"Id": s["ID"], "State": str(s["Version"]["Index"])} for s in services]
        return state_fingerprint(existing[1] if existing else None, containers)

    async def plan(
        self, project: str, compose_yaml: str | None = None, env: Mapping[str, str] | None = None
    ) -> PlanResult:
        """What ``up`` would do now, or after deploying ``compose_yaml`` (and ``env``). Changes nothing."""
        validate_project_name(project)
        proposed = None if compose_yaml is None else validate_compose_yaml(compose_yaml)
        new_env = None if env is None else render_env(validate_env(env))
        return await self._plan(project, proposed, new_env, keep_env=env is None)

    async def rollback_plan(self, project: str, version: int | None = None) -> PlanResult:
        """What ``rollback`` would do: the plan of the version it would bring back."""
        target = await to_thread.run_sync(self.store.rollback_target, project, version)
        snapshot = await to_thread.run_sync(self.store.read, project, target)
        return await self._plan(project, snapshot.compose, snapshot.env, keep_env=False)

    async def down_risk(self, project: str) -> DownRisk:
        """What ``down`` would remove now, and which volumes hold data it could delete."""
        stack = await self.catalog.resolve(project)
        containers = await to_thread.run_sync(self.catalog.engine.project_containers, project)
        model = None
        if stack.folder is not None:
            try:
                model = await self.catalog.config_model(stack)
            except GatewayError:
                model = None  # down still works by the project label; the containers say what it takes
        return down_risk(model, containers)

    async def describe(self, project: str, action: str, services: list[str] | None) -> str:
        """What restart, start or stop would touch, for a confirmation prompt."""
        await self.catalog.resolve(project)
        containers = await to_thread.run_sync(self.catalog.engine.project_containers, project)
        rows = sorted(
            f"{str((c.get('Names') or ['?'])[0]).lstrip('/')} ({c.get('State')})"
            for c in containers
            if not services or c["Labels"].get(SERVICE_LABEL) in services
        )
        if not containers and await to_thread.run_sync(self.catalog.swarm.has_stack, project):
            # A swarm stack has tasks, not containers of its own project (issue 26).
            tasks, _ = await self.catalog.swarm.ps_nodes_async(project)
            rows = sorted(
                f"{t.container or t.service} ({t.state} on {t.node or 'no node yet'})"
                for t in tasks
                if not services or t.service in services
            )
        scope = f"services {', '.join(services)}" if services else "every service"
        return f"What {action} does to '{project}' ({scope}):\n" + (
            "\n".join(f"  - {row}" for row in rows) or "  (no container)"
        )

    async def _plan(self, project: str, proposed: bytes | None, new_env: bytes | None, *, keep_env: bool) -> PlanResult:
        folder = self.catalog.stacks_dir / project
        existing = await to_thread.run_sync(VersionStore.on_disk, folder)
        if proposed is None and existing is None:
            await self.catalog.resolve(project, need_folder=True)  # raises: unknown, or external without a file
        containers = await to_thread.run_sync(self.catalog.engine.project_containers, project)
        version = await to_thread.run_sync(self.store.on_disk_version, project)
        cli = await self.catalog.compose.get()
        warnings: list[str] = []
        current_model: dict[str, Any] | None = None
        if existing is not None and proposed is not None:
            try:
                current_model = await self.catalog.config_model(stack_of(folder, existing))
            except GatewayError as exc:
                warnings.append(f"the compose file on disk does not load: {str(exc).splitlines()[0]}")
        if keep_env and existing is not None:
            new_env = existing[1].env
        actions = []
        async with candidate_for(self.store, folder, project, existing, proposed, new_env) as candidate:
            verdict, model = await self.judged(cli, folder, existing, candidate if proposed is not None else None)
            if proposed is None:
                current_model = model
            if model is None:
                warnings.append("not planned: Compose must not load a file the policy refuses for its references")
            # -- swarm (issue 26): a swarm stack's plan compares its stack file with the running service
            # specs (gateway/swarm/plan.py); Compose's hashes and dry run know nothing of Swarm.
            elif (swarm := await plan_swarm(self.catalog.swarm, project, model)) is not None:
                actions = swarm.actions
                warnings += swarm.warnings
            else:
                hashes = await config_hashes(cli, candidate)
                try:
                    simulated: dict[str, set[str]] | None = await dry_run_up(cli, candidate)
                except ComposeFailed as exc:
                    simulated = None
                    warnings.append(
                        f"Compose's dry run failed, so this plan rests on config hashes alone: {describe_failure(exc)}"
                    )
                actions = build_actions(project, model, containers, hashes, simulated)
        self.metrics.record_execution(self.plane, "plan", ok=True)
        return PlanResult(
            project=project,
            version=version,
            actions=actions,
            policy=verdict,
            down=down_risk(current_model, containers),
            warnings=warnings,
        )

    async def judged(
        self, cli: ComposeCli, folder: Path, existing: tuple[Path, Snapshot] | None, candidate: Candidate | None
    ) -> tuple[Verdict, dict[str, Any] | None]:
        """The guard's verdict on the stack's files, or on ``candidate``; and Compose's (default) model of them.

        The model is None when the guard refused the file references: Compose would read them.

        Raises:
            InvalidInput: Compose rejects the candidate.
            ComposeFailed: Compose rejects the stack's own file.
            PolicyViolation: the guard cannot read a file.
        """
        stack = stack_of(folder, existing)
        if candidate is None:
            # ComposeFailed propagates: the stack's own file does not load, and that is the answer.
            evaluation = await self.catalog.guard.evaluate(stack, cli)
            model = await self.catalog.config_model(stack) if evaluation.model else None
            return evaluation.verdict, model
        try:
            evaluation = await self.catalog.guard.evaluate(
                stack, cli, source=candidate.compose_file, env_file=candidate.env_file
            )
        except ComposeFailed as exc:
            raise rejected(exc, candidate) from exc
        if not evaluation.model:
            return evaluation.verdict, None
        return evaluation.verdict, await validated(cli, candidate)
