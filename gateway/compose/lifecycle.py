"""The write path: up, down, restart, start and stop through the Compose CLI (or Docker Swarm).

Writes on one project are serialised by a lock of its own; reads never wait on them. Every call
leaves an audit line, refusals included, and is counted under its control plane.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, Literal

import anyio
from anyio import to_thread

from ..audit import AuditLog, Intent
from ..catalog import StackCatalog
from ..errors import (
    AuditUnavailable,
    ComposeFailed,
    GatewayError,
    InvalidInput,
    PolicyRefused,
    PolicyViolation,
    ShuttingDown,
)
from ..metrics import CommandExecutionMetrics, ControlPlane
from ..models import ActionResult
from ..stacks import Stack, validate_services
from ..swarm.stackfile import StackTarget
from .cli import ProgressCallback
from .running import RunningCommands

__all__ = ["EventLog", "Lifecycle", "ServiceAction", "SERVICE_ACTIONS"]

logger = logging.getLogger(__name__)

ServiceAction = Literal["restart", "start", "stop"]
SERVICE_ACTIONS: tuple[ServiceAction, ...] = ("restart", "start", "stop")


class EventLog:
    """Compose's events of one call: kept for its result, and passed on to the caller's progress."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.lines: list[str] = []
        self._progress = progress

    async def __call__(self, text: str) -> None:
        self.lines.append(text)
        if self._progress is not None:
            await self._progress(text)


class Lifecycle:
    """Lifecycle commands on the stacks of one catalog."""

    def __init__(
        self,
        catalog: StackCatalog,
        *,
        plane: ControlPlane,
        metrics: CommandExecutionMetrics,
        audit: AuditLog | None = None,
        self_project: str | None = None,
        running: RunningCommands | None = None,
    ) -> None:
        self.catalog = catalog
        # The commands running now: a shutdown waits for them, then stops them (gateway.compose.running).
        self.running = running or RunningCommands()
        self.plane = plane
        self.metrics = metrics
        self.audit = audit
        self.self_project = self_project
        self._locks: dict[str, anyio.Lock] = {}

    def lock(self, project: str) -> anyio.Lock:
        """The lock that serialises writes on ``project``."""
        lock = self._locks.get(project)
        if lock is None:
            lock = self._locks[project] = anyio.Lock()
        return lock

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
        """Create and start the stack's services, detached; with ``wait``, until they are running/healthy.

        ``on_behalf_of`` is the person the caller acts for (the panel's user), for the audit line.
        """
        wanted = self._validated_services("up", project, services, caller, on_behalf_of)
        args = ["up", "--detach", "--remove-orphans"] + (["--wait"] if wait else []) + (wanted or [])
        return await self._mutate(
            "up",
            project,
            args,
            {"services": wanted, "wait": wait},
            caller,
            progress,
            need_folder=True,
            on_behalf_of=on_behalf_of,
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
        args = ["down", "--remove-orphans"] + (["--volumes"] if volumes else [])
        return await self._mutate(
            "down", project, args, {"volumes": volumes}, caller, progress, on_behalf_of=on_behalf_of
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
        """restart, start or stop the stack's containers, or only those of ``services``.

        start creates nothing (that is ``up``); stop keeps the containers.
        """
        wanted = self._validated_services(action, project, services, caller, on_behalf_of)
        return await self._mutate(
            action,
            project,
            [action, *(wanted or [])],
            {"services": wanted},
            caller,
            progress,
            on_behalf_of=on_behalf_of,
        )

    def _validated_services(
        self, action: str, project: str, services: list[str] | None, caller: str, on_behalf_of: str | None
    ) -> list[str] | None:
        """Valid service names, or an audited refusal: every mutating call leaves an audit line."""
        shown = {"project": str(project)[:100], "services": [str(s)[:100] for s in services or []][:100]}
        with self.audit_refusals(action, shown, caller, on_behalf_of):
            return validate_services(services)

    @contextmanager
    def audit_refusals(
        self, tool: str, arguments: dict[str, Any], caller: str, on_behalf_of: str | None
    ) -> Iterator[None]:
        """Record a :class:`GatewayError` raised in the block as a refusal of ``tool``, then let it through.

        For the checks before a call runs. ``arguments`` is read when the error comes, so the block
        may add to it.
        """
        try:
            yield
        except GatewayError as exc:
            self.audit_refusal(tool, arguments, caller, str(exc), on_behalf_of=on_behalf_of)
            raise

    def audit_refusal(
        self, tool: str, arguments: dict[str, Any], caller: str, reason: str, *, on_behalf_of: str | None = None
    ) -> None:
        """Record a call that was refused before it ran (scope, read-only, policy)."""
        if self.audit is not None:
            self.audit.write(
                caller=caller,
                control_plane=self.plane.value,
                tool=tool,
                arguments=arguments,
                outcome="refused",
                duration_ms=0.0,
                error=reason,
                on_behalf_of=on_behalf_of,
            )

    async def write_intent(
        self, tool: str, arguments: dict[str, Any], caller: str, on_behalf_of: str | None
    ) -> Intent | None:
        """The call's intent line, on disk before anything changes; None without an audit log.

        Raises:
            AuditUnavailable: the line cannot be written, so the call must not run.
        """
        if self.audit is None:
            return None
        return await to_thread.run_sync(
            partial(
                self.audit.intent,
                caller=caller,
                control_plane=self.plane.value,
                tool=tool,
                arguments=arguments,
                on_behalf_of=on_behalf_of,
            )
        )

    async def write_outcome(self, intent: Intent | None, outcome: str, error: str | None) -> None:
        """How the call announced by ``intent`` ended; shielded, so a cancelled call records it too."""
        if intent is not None and self.audit is not None:
            with anyio.CancelScope(shield=True):
                await to_thread.run_sync(partial(self.audit.outcome, intent, outcome=outcome, error=error))

    async def _mutate(
        self,
        action: str,
        project: str,
        args: list[str],
        arguments: dict[str, Any],
        caller: str,
        progress: ProgressCallback | None,
        *,
        need_folder: bool = False,
        on_behalf_of: str | None = None,
    ) -> ActionResult:
        arguments = {"project": project, **{k: v for k, v in arguments.items() if v not in (None, False)}}
        started = time.perf_counter()
        with self.audit_refusals(action, arguments, caller, on_behalf_of):
            stack = await self.catalog.resolve(project, need_folder=need_folder)
            if self.self_project and project == self.self_project:
                raise PolicyViolation(
                    f"refusing to {action} '{project}': the compose-agent itself runs in this project, "
                    "and must not switch off its own supervisor path; manage it from the host"
                )
        events = EventLog(progress)
        what = f"{action} on '{project}'"
        intent: Intent | None = None
        outcome, error, note, ran = "error", None, "", False
        try:
            async with self.lock(project):
                # Written ahead and on disk before Compose starts: if this raises, nothing runs.
                intent = await self.write_intent(action, arguments, caller, on_behalf_of)
                with self.running.track(what) as stopped:
                    ran = True
                    note = await self._run(action, stack, args, events, arguments)
                if stopped.cancelled_caught:
                    raise self.running.interruption(what)
            outcome = "ok"
        except anyio.get_cancelled_exc_class():
            outcome, error = "cancelled", "the call was cancelled; the compose process was stopped"
            raise
        except PolicyRefused as exc:
            outcome, error = "refused", str(exc)
            raise
        except ShuttingDown as exc:
            outcome, error = ("interrupted" if ran else "refused"), str(exc)
            raise
        except AuditUnavailable as exc:
            logger.error("refused %s: %s", what, exc)
            outcome, error = "refused", str(exc)
            raise
        except GatewayError as exc:
            error = str(exc)
            raise
        finally:
            duration = (time.perf_counter() - started) * 1000
            self.catalog.forget(project)
            self.catalog.engine.forget_start_times()
            self.metrics.record_execution(self.plane, action, ok=outcome == "ok")
            await self.write_outcome(intent, outcome, error)
        return ActionResult(
            project=project,
            action=action,
            ok=True,
            services=arguments.get("services"),
            duration_ms=round(duration, 1),
            events=events.lines,
            message=f"{action} finished on '{project}'{note}",
        )

    async def up_locked(self, stack: Stack, *, wait: bool, progress: ProgressCallback) -> None:
        """``up`` for a caller that holds the project's lock and writes its own audit lines (deploy, rollback).

        Raises:
            PolicyRefused: the guard refuses the stack's files as they are now.
            ComposeFailed: Compose's own error.
        """
        args = ["up", "--detach", "--remove-orphans"] + (["--wait"] if wait else [])
        await self._run("up", stack, args, progress, {"project": stack.name, "wait": wait})

    async def _run(
        self, action: str, stack: Stack, args: list[str], on_event: ProgressCallback, arguments: dict[str, Any]
    ) -> str:
        """Run the command; returns a note for the result's message ("" when nothing special happened).

        A stack whose compose file asks for Docker Swarm goes to :meth:`_swarm` instead.

        ``up`` runs only once the policy guard allows the stack's files as they are now (inside the
        project's lock, so a write through the gateway cannot slip in between).

        A stack whose compose file no longer loads must not trap its running containers: every
        action but ``up`` then acts on the containers by their project label, as for a folder-less
        project. So does one whose files reference files outside its folder: Compose would read
        them while loading, and its errors would quote them.
        """
        target = await self.catalog.target(stack, fresh=action == "up")
        if target.target == "swarm":
            await self._swarm(action, stack, target, arguments, on_event)
            return " (Docker Swarm)"
        cli = await self.catalog.compose.get()
        reason: str | None = None
        if action == "up":
            await self.catalog.guard.enforce(stack, cli, "up")
        elif not stack.external:
            reason = await self._unloadable(stack)
        if reason is None:
            try:
                await cli.run(stack.name, args, compose_file=stack.compose_file, cwd=stack.folder, progress=on_event)
                return ""
            except ComposeFailed as failed:
                if action == "up" or stack.external or await self._model_loads(stack):
                    raise
                detail = failed.stderr_tail.splitlines()[-1] if failed.stderr_tail else "it does not load"
                reason = f"its compose file could not be loaded ({detail})"
        logger.warning("stack %s: %s; %s acts on its containers by label", stack.name, reason, action)
        await cli.run(stack.name, args, progress=on_event)
        return (
            f"; {reason}, so {action} acted on the project's containers by their compose project label; "
            "fix the file before the next up"
        )

    async def _swarm(
        self,
        action: str,
        stack: Stack,
        target: StackTarget,
        arguments: dict[str, Any],
        on_event: ProgressCallback,
    ) -> None:
        """The action on a swarm stack. ``up`` deploys the model Compose loads, once the guard allows it.

        The guard judges the model with every profile enabled, a superset of the default-profile
        model that is deployed, exactly as for a Compose stack's ``up``.
        """
        swarm = self.catalog.swarm
        services = arguments.get("services")
        if action == "up":
            await self.catalog.guard.enforce(stack, await self.catalog.compose.get(), "up")
            model = await self.catalog.config_model(stack)
            await swarm.deploy(
                stack.name,
                model,
                resolve_image=target.resolve_image,
                services=services,
                wait=bool(arguments.get("wait")),
                progress=on_event,
            )
        elif action == "down":
            await swarm.remove(stack.name, volumes=bool(arguments.get("volumes")), progress=on_event)
        elif action == "restart":
            await swarm.restart(stack.name, services, on_event)
        elif action == "start":
            await swarm.start(stack.name, services, on_event)
        elif action == "stop":
            await swarm.stop(stack.name, services, on_event)
        else:  # pragma: no cover - the tools offer no other action
            raise InvalidInput(f"{action} is not an action on a swarm stack")

    async def _unloadable(self, stack: Stack) -> str | None:
        """Why Compose must not load the stack's files, checked without running it; None when it may."""
        try:
            outside = await self.catalog.guard.references_refused(stack)
        except GatewayError as exc:
            return f"its compose file could not be loaded ({str(exc).splitlines()[0]})"
        if outside:
            return "its compose files reference files outside the stack folder"
        return None

    async def _model_loads(self, stack: Stack) -> bool:
        try:
            await self.catalog.config_model(stack)
        except GatewayError:
            return False
        return True
