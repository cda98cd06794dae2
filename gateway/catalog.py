"""The stacks the gateway knows, each resolved once per call into one immutable :class:`StackView`.

A stack is a folder under the stacks dir, or a compose project (or swarm stack) running without one.
A call first resolves the name (:meth:`StackCatalog.resolve`: validated, found, or
:class:`~gateway.errors.StackNotFound` naming the known ones), then what it needs of the stack, once:

- :meth:`StackCatalog.judged`, for ``up``, ``config`` and ``plan``: the policy guard's verdict on
  the files as they are now, with the judged model (every profile) and the reading it came from;
- :meth:`StackCatalog.view`, for ``list_stacks``, ``ps`` and ``logs``: the same from the guard's
  kept verdict (a mark; never raises: a stack that cannot be judged has an error verdict);
- :meth:`StackCatalog.acting`, for ``stop``, ``start``, ``restart`` and ``down``: where the stack
  runs now, by its containers, without reading its files (they act on the last judged model).

The layers below take that value and never ask the catalog again. What is cached about a stack
(the guard's verdicts, which are the one file-signature cache; the views derived from them; the
engine's kept listings and start times; ``ps`` rows) is cleared by one call, :meth:`stack_changed`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anyio import to_thread

from .compose.cli import ComposeCli
from .compose.locate import ComposeLocator
from .engine.client import Engine
from .engine.containers import PROJECT_LABEL
from .errors import GatewayError, InvalidInput, StackNotFound
from .models import ServiceStatus, Verdict
from .policy.guard import Evaluation, PolicyGuard
from .policy.rules import Policy
from .stacks import Stack, discover_stacks, find_stack, validate_project_name
from .swarm.backend import SwarmBackend
from .swarm.dockercli import DockerCli
from .swarm.stackfile import TARGET_KEY, StackTarget, stack_target

__all__ = ["StackCatalog", "StackView", "active_services"]

logger = logging.getLogger(__name__)

# ps rows of one stack, by the engine's container entry each came from (see gateway.reads).
Rows = dict[int, tuple[dict[str, Any], ServiceStatus]]


@dataclass(frozen=True)
class StackView:
    """A stack as one call sees it: who it is, its judged model and verdict, and where it runs.

    ``evaluation`` is None when the call did not judge the stack (a folder-less one, or an action
    on what already runs); ``services`` are those ``up`` would create (active profiles, not scaled to 0).
    """

    stack: Stack
    target: StackTarget
    evaluation: Evaluation | None = None
    services: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.stack.name

    @property
    def folder(self) -> Path | None:
        return self.stack.folder

    @property
    def secret_names(self) -> tuple[str, ...]:
        """The secrets the judged model takes from Vault (none when it was not judged)."""
        return self.evaluation.secret_names if self.evaluation is not None else ()

    @property
    def compose_file(self) -> Path | None:
        return self.stack.compose_file

    @property
    def verdict(self) -> Verdict | None:
        return self.evaluation.verdict if self.evaluation is not None else None

    @property
    def model(self) -> dict[str, Any]:
        """The judged model, every profile enabled ({} when Compose did not run on the files)."""
        return self.evaluation.model if self.evaluation is not None else {}

    @property
    def profiles(self) -> tuple[str, ...]:
        """The profiles the stack's ``.env`` turns on, with which the judged model runs."""
        return self.evaluation.profiles if self.evaluation is not None else ()

    @property
    def digest(self) -> str | None:
        """A hash of every file the model was read from (includes and env files too)."""
        reading = self.evaluation.reading if self.evaluation is not None else None
        return reading.digest if reading is not None else None


class StackCatalog:
    """Finds stacks by name and resolves them into views; owns what is cached about each."""

    def __init__(
        self,
        stacks_dir: Path,
        engine: Engine,
        compose: ComposeLocator,
        guard: PolicyGuard | None = None,
        swarm: SwarmBackend | None = None,
    ) -> None:
        # Absolute, because the Compose CLI runs with the stack's folder as its working directory.
        self.stacks_dir = stacks_dir.resolve()
        self.engine = engine
        self.compose = compose
        self.guard = guard or PolicyGuard(Policy())
        # The docker CLI gets the Compose CLI's environment: the same variables, the same exclusions.
        self.swarm = swarm or SwarmBackend(engine, lambda: DockerCli.locate(None, compose.located().env))
        # Views derived from the guard's kept evaluations, by stack: reused while the evaluation is.
        self._views: dict[str, StackView] = {}
        #: ps rows of each stack (filled by gateway.reads), kept here so that stack_changed clears them.
        self.rows: dict[str, Rows] = {}

    def folders(self) -> dict[str, Stack]:
        """Every stack folder under the stacks dir, by name."""
        return discover_stacks(self.stacks_dir)

    def folder(self, project: str) -> Stack | None:
        """The stack folder named ``project`` (already validated), or None."""
        return find_stack(self.stacks_dir, project)

    async def resolve(self, project: str, *, need_folder: bool = False) -> Stack:
        """The stack named ``project``: a folder, or (when allowed) a running external project.

        Raises:
            InvalidInput: a bad name, or an external stack where a folder is needed.
            StackNotFound: naming the known stacks.
        """
        validate_project_name(project)
        stack = self.folder(project)
        if stack is not None:
            return stack
        containers = await to_thread.run_sync(self.engine.project_containers, project)
        if containers or await self.swarm_has(project):
            if need_folder:
                raise InvalidInput(
                    f"stack '{project}' is external (it runs, but has no folder under the stacks dir); "
                    f"this needs its compose file: add a folder '{project}' with a compose.yaml"
                )
            return Stack(project)
        await self.not_found(project)
        raise AssertionError("unreachable")  # pragma: no cover

    async def judged(self, stack: Stack, cli: ComposeCli) -> StackView:
        """The stack folder as its files are now, judged (an allowed verdict is reused only once its
        files are checked unchanged); for ``up``, ``config`` and ``plan``. A refused verdict is returned,
        not raised: the caller says what it refuses to do.

        Raises:
            PolicyViolation, ComposeFailed: the files cannot be judged (see ``PolicyGuard.evaluate``).
            InvalidInput: a malformed ``x-compose-agent`` block.
        """
        evaluation = await self.guard.current(stack, cli)
        return await self._view(stack, evaluation, strict=True)

    async def view(self, stack: Stack) -> StackView:
        """The stack as the guard last judged it (a mark), for reads; never raises for a folder's sake."""
        if stack.folder is None:
            swarm = await self._swarm_has_quietly(stack.name)
            return StackView(stack, StackTarget("swarm") if swarm else StackTarget())
        evaluation = self.guard.trusted(stack.name)
        if evaluation is None:
            try:
                cli = await self.compose.get()
            except GatewayError as exc:
                unjudged = Evaluation(Verdict(allowed=False, error=str(exc).splitlines()[0]), {}, failure=exc)
                return StackView(stack, StackTarget(), unjudged)
            evaluation = await self.guard.marked(stack, cli)
        return await self._view(stack, evaluation, strict=False)

    async def acting(self, stack: Stack) -> StackView:
        """The stack for an action on what runs (stop, start, restart, down): on Swarm when the swarm runs
        it and no compose container does, else on Compose. Its files are not read.

        Raises:
            EngineUnavailable: the engine cannot be asked.
        """
        containers = await to_thread.run_sync(self.engine.project_containers, stack.name)
        swarm = not containers and await self.swarm_has(stack.name)
        return StackView(stack, StackTarget("swarm") if swarm else StackTarget())

    async def defined_services(self, stack: Stack) -> list[str]:
        """The services ``up`` would create for the stack (from its mark); [] when it cannot be judged."""
        return list((await self.view(stack)).services)

    async def _view(self, stack: Stack, evaluation: Evaluation, *, strict: bool) -> StackView:
        model = evaluation.model
        kept = self._views.get(stack.name)
        # The same judgement: the kept one itself, or a reuse of it (same model and verdict).
        same = kept is not None and (
            kept.evaluation is evaluation
            or (bool(model) and kept.model is model and kept.verdict is evaluation.verdict)
        )
        if kept is not None and same and model:
            return StackView(stack, kept.target, evaluation, kept.services)
        if not model:
            if not same and evaluation.failure is not None:
                # Once per judgement, not per read: a broken file must not hide what does run.
                logger.warning("cannot read the services of stack %s: %s", stack.name, evaluation.verdict.error)
            # Compose never ran on the files: a swarm stack is known by what the swarm runs.
            swarm = await self._swarm_has_quietly(stack.name)
            view = StackView(stack, StackTarget("swarm") if swarm else StackTarget(), evaluation)
        else:
            try:
                # Most stacks never mention the opt-in block: Compose, without reading it.
                target = stack_target(model) if TARGET_KEY in model else StackTarget()
            except InvalidInput:
                if strict:
                    raise
                target = StackTarget()
            view = StackView(stack, target, evaluation, active_services(model, evaluation.profiles))
        self._views[stack.name] = view
        return view

    async def _swarm_has_quietly(self, project: str) -> bool:
        try:
            return await self.swarm_has(project)
        except GatewayError:
            return False

    async def swarm_has(self, project: str) -> bool:
        """Whether the swarm runs a stack called ``project`` (False where the engine is no manager)."""
        has: bool = await to_thread.run_sync(self.swarm.has_stack, project)
        return has

    async def not_found(self, project: str) -> None:
        """Raise StackNotFound for ``project``, naming the stacks that do exist.

        Raises:
            StackNotFound: always.
        """
        names = set(self.folders())
        try:
            containers = await to_thread.run_sync(self.engine.project_containers, None)
        except GatewayError:
            containers = []
        names.update(c["Labels"][PROJECT_LABEL] for c in containers)
        try:
            names.update(await to_thread.run_sync(self.swarm.stacks))
        except GatewayError:
            pass
        listing = ", ".join(sorted(names)) or "none"
        raise StackNotFound(f"stack '{project}' not found; known stacks: {listing}")

    def stack_changed(self, project: str, *, container: str | None = None, action: str | None = None) -> None:
        """The one freshness call: what is cached about ``project`` is no longer trusted.

        The guard's verdict is checked against its files again before its next use; the derived view
        and the ``ps`` rows go; the engine's kept listing goes too. ``action`` (with its ``container``)
        is the engine event that told of the change (from the event watcher); None is a change the
        gateway made itself (a write) or a folder that came or went, after which the engine's start
        times are dropped as well.
        """
        self.guard.forget(project)
        self._views.pop(project, None)
        self.rows.pop(project, None)
        if action is None:
            self.engine.forget_start_times()
        else:
            self.engine.container_changed(project, container, action)


def active_services(model: Mapping[str, Any], profiles: tuple[str, ...]) -> tuple[str, ...]:
    """The services ``up`` creates from a model of every profile when ``profiles`` are on: those in no
    profile or in one of them, and not scaled to zero (Compose refuses a model whose active service
    depends on an inactive one, so activation stops there)."""
    everything = "*" in profiles
    services: Mapping[str, Any] = model.get("services") or {}
    active = []
    for name, spec in services.items():
        spec = spec if isinstance(spec, dict) else {}
        own = spec.get("profiles") or []
        if own and not everything and not set(own) & set(profiles):
            continue
        if spec.get("scale") == 0 or (spec.get("deploy") or {}).get("replicas") == 0:
            continue
        active.append(str(name))
    return tuple(sorted(active))
