"""Agents change stacks through tools, not files: deploy, plan, rollback and the versions list.

``deploy`` checks a compose file before anything on disk or in the engine changes:

1. The policy guard reads it strictly and Compose normalises it, from a scratch folder on the stacks
   dir's file system, read as if it sat in the stack's folder (so relative paths and the policy see
   the real places); the guard judges Compose's model.
2. Only then is it kept as the next numbered version, written into the stack folder atomically
   (see :mod:`gateway.deploy.versions`), and brought up: ``up`` judges the installed files again and
   runs exactly the model it judged (:mod:`gateway.compose.runfile`).

Invalid YAML, a failed validation or a policy refusal leave the stack's files, its versions and
the engine exactly as they were. ``rollback`` is the same path with a kept version's change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio import to_thread

from ..audit import Intent
from ..catalog import StackCatalog
from ..compose.cli import ComposeCli, EventLog, ProgressCallback
from ..compose.lifecycle import Lifecycle
from ..errors import ComposeFailed, GatewayError, InvalidInput, PolicyViolation, ShuttingDown
from ..models import DeployResult, ServiceChange
from ..policy.candidate import candidate_for, render_env, stack_of, validate_compose_yaml, validate_env
from ..policy.guard import refusal
from ..stacks import Stack, validate_project_name
from .planner import Planner
from .versions import Snapshot, VersionStore, sha256_hex

__all__ = ["Deployer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Change:
    """What deploy or rollback does: put these files into the stack's folder, then bring it up."""

    compose: bytes
    env: bytes | None
    wait: bool
    # deploy without env: the .env on disk stays (``env`` is then None).
    keep_env: bool = False
    # rollback: the kept version that comes back; None records the files as a new version.
    version: int | None = None
    env_names: list[str] | None = None


class Deployer:
    """deploy, plan, rollback and versions over the stacks of one catalog, through its write path."""

    def __init__(self, catalog: StackCatalog, lifecycle: Lifecycle, planner: Planner) -> None:
        self.catalog = catalog
        self.lifecycle = lifecycle
        self.planner = planner
        self.store = planner.store

    # -- writes ---------------------------------------------------------------------------------

    async def deploy(
        self,
        project: str,
        compose_yaml: str,
        *,
        env: Mapping[str, str] | None = None,
        wait: bool = False,
        caller: str = "local",
        on_behalf_of: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> DeployResult:
        """Validate, guard, keep as the next version, write atomically, then ``up``."""
        arguments: dict[str, Any] = {"project": str(project)[:100]}
        with self.lifecycle.audit_refusals("deploy", arguments, caller, on_behalf_of):
            validate_project_name(project)
            data = validate_compose_yaml(compose_yaml)
            arguments.update(sha256=sha256_hex(data), bytes=len(data))
            new_env = None if env is None else validate_env(env)
            if new_env is not None:
                arguments["env_names"] = sorted(new_env)
            self._refuse_self(project, "deploy")
        if new_env is None:
            change = _Change(data, None, wait, keep_env=True)
        else:
            change = _Change(data, render_env(new_env), wait, env_names=sorted(new_env))
        return await self._apply(
            "deploy", project, change, arguments, caller=caller, on_behalf_of=on_behalf_of, progress=progress
        )

    async def rollback(
        self,
        project: str,
        version: int | None = None,
        *,
        wait: bool = False,
        caller: str = "local",
        on_behalf_of: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> DeployResult:
        """Bring back the version before the one on disk, or ``version``, and bring it up.

        ``on_behalf_of`` is the person the caller acts for (the panel's user), for the audit lines.
        """
        arguments: dict[str, Any] = {"project": str(project)[:100], "version": version}
        with self.lifecycle.audit_refusals("rollback", arguments, caller, on_behalf_of):
            validate_project_name(project)
            if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
                raise InvalidInput("version must be a positive whole number, as listed by versions")
            self._refuse_self(project, "rollback")
            target = await to_thread.run_sync(self.store.rollback_target, project, version)
            snapshot = await to_thread.run_sync(self.store.read, project, target)
        arguments.update(version=target, sha256=snapshot.sha256)
        change = _Change(snapshot.compose, snapshot.env, wait, version=target)
        return await self._apply(
            "rollback", project, change, arguments, caller=caller, on_behalf_of=on_behalf_of, progress=progress
        )

    def _refuse_self(self, project: str, tool: str) -> None:
        if self.lifecycle.self_project and project == self.lifecycle.self_project:
            raise PolicyViolation(
                f"refusing to {tool} '{project}': the compose-agent itself runs in this project, "
                "and must not replace its own supervisor path; manage it from the host"
            )

    async def _apply(
        self,
        tool: str,
        project: str,
        change: _Change,
        arguments: dict[str, Any],
        *,
        caller: str,
        on_behalf_of: str | None,
        progress: ProgressCallback | None,
    ) -> DeployResult:
        started = time.perf_counter()
        events = EventLog(progress)
        what = f"{tool} on '{project}'"
        running = self.lifecycle.running
        intent: Intent | None = None
        outcome, error, ran = "error", None, False
        try:
            async with self.lifecycle.lock(project):
                folder = self.catalog.stacks_dir / project
                existing = await to_thread.run_sync(VersionStore.on_disk, folder)
                env = change.env
                if change.keep_env:
                    env = existing[1].env if existing is not None else None
                snapshot = Snapshot(change.compose, env)
                cli = await self.catalog.compose.get()
                model, old_model = await self._check(cli, project, existing, snapshot, tool)
                # On disk before the first file changes: if this raises, nothing is written.
                intent = await self.lifecycle.write_intent(tool, arguments, caller, on_behalf_of)
                with running.track(what) as stopped:
                    ran = True
                    previous, version, compose_path = await to_thread.run_sync(
                        self._write, project, existing[1] if existing else None, snapshot, change, caller
                    )
                    # The outcome line says which version this became; the intent could not know it yet.
                    arguments.update(version=version, previous_version=previous)
                    self.catalog.stack_changed(project)
                    await self._up(project, compose_path, change.wait, events, version, previous)
                if stopped.cancelled_caught:
                    raise running.interruption(what)
            outcome = "ok"
        except anyio.get_cancelled_exc_class():
            outcome, error = "cancelled", "the call was cancelled; the compose process was stopped"
            raise
        except ShuttingDown as exc:
            outcome, error = ("interrupted" if ran else "refused"), str(exc)
            raise
        except GatewayError as exc:
            # Before the intent line nothing was written: the call was refused, not failed.
            outcome, error = ("error" if intent is not None else "refused"), str(exc)
            raise
        finally:
            duration = (time.perf_counter() - started) * 1000
            self.catalog.stack_changed(project)
            self.lifecycle.metrics.record_execution(self.lifecycle.plane, tool, ok=outcome == "ok")
            if intent is not None:
                await self.lifecycle.write_outcome(intent, outcome, error)
            elif outcome == "refused" and error is not None:
                self.lifecycle.audit_refusal(tool, arguments, caller, error, on_behalf_of=on_behalf_of)
        return DeployResult(
            project=project,
            action="deploy" if tool == "deploy" else "rollback",
            version=version,
            previous_version=previous,
            sha256=snapshot.sha256,
            created=existing is None,
            changes=_changes(old_model, model),
            env_names=change.env_names,
            duration_ms=round(duration, 1),
            events=events.lines,
            message=f"{tool} finished on '{project}': version {version} is on disk and up",
        )

    async def _check(
        self, cli: ComposeCli, project: str, existing: tuple[Path, Snapshot] | None, snapshot: Snapshot, tool: str
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Compose's model of the new files (and of the old ones), once Compose and the guard accept them.

        Raises:
            InvalidInput: Compose rejects the new change.
            PolicyRefused: the guard refuses them.
        """
        folder = self.catalog.stacks_dir / project
        async with candidate_for(self.store, folder, project, existing, snapshot.compose, snapshot.env) as candidate:
            evaluation = await self.planner.judged(cli, folder, existing, candidate)
        if not evaluation.verdict.allowed:
            raise refusal(project, tool, evaluation.verdict)
        old_model = None
        if existing is not None:
            # What the guard last judged of the files on disk; {} when they did not load (all count as added).
            old_model = (await self.catalog.view(stack_of(folder, existing))).model or None
        return evaluation.model, old_model

    async def _up(
        self,
        project: str,
        compose_path: Path,
        wait: bool,
        on_event: ProgressCallback,
        version: int,
        previous: int | None,
    ) -> None:
        stack = Stack(project, compose_path.parent, compose_path)
        try:
            await self.lifecycle.up_locked(stack, wait=wait, progress=on_event)
        except ComposeFailed as exc:
            back = f"; rollback brings back version {previous}" if previous is not None else ""
            raise ComposeFailed(
                f"version {version} of '{project}' is on disk, but up failed{back}:\n{exc.stderr_tail or exc}",
                returncode=exc.returncode,
                stderr_tail=exc.stderr_tail,
            ) from exc

    def _write(
        self,
        project: str,
        on_disk: Snapshot | None,
        snapshot: Snapshot,
        change: _Change,
        caller: str,
    ) -> tuple[int | None, int, Path]:
        """Keep what is on disk (unless a version holds it) and the new files, install them, mark them current.

        Returns the previous and the new version numbers, and the installed compose file.

        Raises:
            GatewayError: the stacks dir cannot be written.
        """
        try:
            previous = self.store.on_disk_version(project)
            if on_disk is not None and previous is None:
                # Written or edited by hand: kept first, so the deploy can be undone.
                previous = self.store.record(project, on_disk, source="disk", caller=caller)
            version = change.version
            if version is None:
                names = tuple(change.env_names) if change.env_names is not None else ()
                version = self.store.record(project, snapshot, source="deploy", caller=caller, env_names=names)
            compose_path = self.store.install(project, snapshot)
            self.store.set_current(project, version)
        except OSError as exc:
            raise GatewayError(
                f"cannot write the versions or the folder of '{project}' under the stacks dir: {exc.strerror or exc}"
            ) from exc
        return previous, version, compose_path


def _changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[ServiceChange]:
    before: Mapping[str, Any] = (old or {}).get("services") or {}
    after: Mapping[str, Any] = new.get("services") or {}
    changes = []
    for service in sorted(set(before) | set(after)):
        if service not in before:
            kind = "added"
        elif service not in after:
            kind = "removed"
        else:
            kind = "unchanged" if before[service] == after[service] else "changed"
        changes.append(ServiceChange(service=service, change=kind))  # type: ignore[arg-type]
    return changes
