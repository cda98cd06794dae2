"""Plans and the other reads of the deploy family: plan, versions, what a confirmation shows and binds.

Nothing here changes a stack. A plan judges first, and only a judged model that the guard allows
reaches Compose again: its config hashes and its dry run are asked of that very model, written to a
private file (:mod:`gateway.compose.runfile`), never of the stack's files. A refused stack gets no
hash and no dry run, and a model with a provider service or a model runner gets no dry run either
(``up --dry-run`` executes providers). A plan of a compose file an agent sent judges it from a
scratch folder (see :mod:`gateway.policy.candidate`) the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from anyio import to_thread

from ..auth.stacksecrets import StackSecrets
from ..catalog import StackCatalog, active_services
from ..compose.cli import ComposeCli
from ..compose.runfile import RunFiles
from ..engine.containers import SERVICE_LABEL
from ..errors import ComposeFailed, GatewayError
from ..metrics import CommandExecutionMetrics, ControlPlane
from ..models import DownRisk, PlanAction, PlanResult, VersionInfo, VersionList
from ..policy.candidate import (
    Candidate,
    candidate_for,
    config_hashes,
    describe_failure,
    dry_run_up,
    executes_on_the_host,
    rejected,
    render_env,
    stack_of,
    validate_compose_yaml,
    validate_env,
)
from ..policy.guard import Evaluation
from ..policy.reader import read_stack
from ..stacks import validate_project_name
from ..swarm.plan import plan_swarm  # swarm stacks' plans (issue 26)
from .plan import build_actions, down_risk, rotated, state_fingerprint
from .versions import Snapshot, VersionStore

__all__ = ["Planner"]


class Planner:
    """The reads of the deploy family over the stacks of one catalog."""

    def __init__(
        self,
        catalog: StackCatalog,
        store: VersionStore,
        runs: RunFiles,
        *,
        plane: ControlPlane,
        metrics: CommandExecutionMetrics,
        secrets: StackSecrets | None = None,
    ) -> None:
        # A plan asks Compose about the model up would run: with the stack's secrets (gateway.secretrefs).
        self.secrets = secrets or StackSecrets()
        self.catalog = catalog
        self.store = store
        self.runs = runs
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

    async def state(self, project: str, tool: str = "", arguments: Mapping[str, Any] | None = None) -> str:
        """A digest of what a confirmation is bound to: every file the stack's model is read from (the
        compose file, its includes, extended files, env files and ``.env``, by their bytes), and its
        containers. For ``deploy`` and ``rollback`` (given their ``arguments``), the files the model
        they would bring is read from instead. Changes nothing and runs no Compose.
        """
        validate_project_name(project)
        files = await to_thread.run_sync(self._files_digest, project, tool, dict(arguments or {}))
        containers = await to_thread.run_sync(self.catalog.engine.project_containers, project)
        if not containers:
            # A swarm stack (issue 26): its services' versions, which every update, scale or restart bumps.
            services = await to_thread.run_sync(self.catalog.swarm.api.services, project)
            containers = [{"Id": s["ID"], "State": str(s["Version"]["Index"])} for s in services]
        return state_fingerprint(files, containers)

    def _files_digest(self, project: str, tool: str, arguments: dict[str, Any]) -> str:
        """The reading's digest of the stack's files, or of a deploy's or rollback's; blocking.

        What cannot be read strictly is bound by what was wrong: the call it confirms is refused anyway.
        """
        folder = self.catalog.stacks_dir / project
        existing = VersionStore.on_disk(folder)
        sources: dict[Path, bytes] = {}
        try:
            if tool in ("deploy", "rollback"):
                if tool == "deploy":
                    compose = validate_compose_yaml(arguments.get("compose_yaml"))
                    env = None if arguments.get("env") is None else render_env(validate_env(arguments["env"]))
                    if env is None and existing is not None:
                        env = existing[1].env
                else:
                    version = self.store.rollback_target(project, arguments.get("version"))
                    snapshot = self.store.read(project, version)
                    compose, env = snapshot.compose, snapshot.env
                compose_file = existing[0] if existing is not None else folder / "compose.yaml"
                sources = {compose_file: compose, folder / ".env": env or b""}
            elif existing is None:
                return "no compose file"
            else:
                compose_file = existing[0]
            return read_stack(folder, [compose_file], sources=sources).digest
        except (GatewayError, OSError) as exc:
            code = getattr(exc, "code", type(exc).__name__)
            return "unreadable:" + hashlib.sha256(f"{code}\0{exc}".encode("utf-8", "replace")).hexdigest()

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
        """What ``down`` would remove now, and which volumes hold data it could delete: ``down`` acts on
        the stack's last judged model (or by label), so that model, not the files, says what it declares."""
        await self.catalog.resolve(project)
        containers = await to_thread.run_sync(self.catalog.engine.project_containers, project)
        model = await to_thread.run_sync(self.runs.read, project)
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
        if proposed is None:
            # ComposeFailed and PolicyViolation propagate: the stack's own files cannot be judged.
            view = await self.catalog.judged(stack_of(folder, existing), cli)
            assert view.evaluation is not None
            evaluation, current_model = view.evaluation, view.model or None
        else:
            current_model = None
            if existing is not None:
                current_model = (await self.catalog.view(stack_of(folder, existing))).model or None
            if keep_env and existing is not None:
                new_env = existing[1].env
            async with candidate_for(self.store, folder, project, existing, proposed, new_env) as candidate:
                evaluation = await self.judged(cli, folder, existing, candidate)
        actions: list[PlanAction] = []
        if not evaluation.verdict.allowed:
            warnings.append(
                "not planned: the policy guard refuses this compose file, so Compose does not run on it "
                "(no config hashes, no dry run)"
            )
        # -- swarm (issue 26): a swarm stack's plan compares its stack file with the running service
        # specs (gateway/swarm/plan.py); Compose's hashes and dry run know nothing of Swarm.
        elif (swarm := await plan_swarm(self.catalog.swarm, project, _active(evaluation))) is not None:
            actions = swarm.actions
            warnings += swarm.warnings
        else:
            actions = await self._simulate(cli, project, folder, evaluation, containers, warnings)
        self.metrics.record_execution(self.plane, "plan", ok=True)
        return PlanResult(
            project=project,
            version=version,
            actions=actions,
            policy=evaluation.verdict,
            down=down_risk(current_model, containers),
            warnings=warnings,
        )

    async def _simulate(
        self,
        cli: ComposeCli,
        project: str,
        folder: Path,
        evaluation: Evaluation,
        containers: list[dict[str, Any]],
        warnings: list[str],
    ) -> list[PlanAction]:
        """What ``up`` would do with an allowed judged model: its hashes, and a dry run of it unless it
        names a program Compose would execute on the host even in a dry run."""
        model, values = await self.secrets.prepare(project, evaluation.model)
        run = await to_thread.run_sync(self.runs.write_scratch, project, folder, model, evaluation.profiles)
        run = replace(run, env=values)
        try:
            hashes = await config_hashes(cli, run, project)
            simulated: dict[str, set[str]] | None = None
            executes = executes_on_the_host(model)
            if executes:
                warnings.append(
                    f"no dry run: {executes}, which Compose executes on the host even in a dry run; "
                    "this plan rests on config hashes alone"
                )
            else:
                try:
                    simulated = await dry_run_up(cli, run, project)
                except ComposeFailed as exc:
                    warnings.append(
                        f"Compose's dry run failed, so this plan rests on config hashes alone: {describe_failure(exc)}"
                    )
        finally:
            await to_thread.run_sync(self.runs.discard, run)
        return rotated(build_actions(project, model, containers, hashes, simulated), model, containers)

    async def judged(
        self, cli: ComposeCli, folder: Path, existing: tuple[Path, Snapshot] | None, candidate: Candidate
    ) -> Evaluation:
        """The guard's evaluation of ``candidate`` (a compose file not deployed yet), read as if it sat in
        the stack's folder: its verdict, and the model (every profile) it judged.

        Raises:
            InvalidInput: Compose rejects the candidate (its message, without the scratch folder's path).
            PolicyViolation: the guard cannot read the candidate strictly.
        """
        stack = stack_of(folder, existing)
        try:
            return await self.catalog.guard.evaluate(
                stack, cli, source=candidate.compose_file, env_file=candidate.env_file
            )
        except ComposeFailed as exc:
            raise rejected(exc, candidate) from exc


def _active(evaluation: Evaluation) -> dict[str, Any]:
    """The judged model with only the services ``up`` would run (its profiles on, none scaled to 0)."""
    model = evaluation.model
    active = set(active_services(model, evaluation.profiles))
    services = {name: spec for name, spec in (model.get("services") or {}).items() if name in active}
    return {**model, "services": services}
