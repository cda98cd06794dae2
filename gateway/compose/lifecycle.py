"""The write path: up, down, restart, start and stop through the Compose CLI (or Docker Swarm).

Writes on one project are serialised by a lock of its own; reads never wait on them. Every call
leaves an audit line, refusals included, and is counted under its control plane.

A call resolves its stack once: the name before the lock (:meth:`StackCatalog.resolve
<gateway.catalog.StackCatalog.resolve>`), then inside it one :class:`~gateway.catalog.StackView`.
``up`` judges the files as they are now and runs exactly the judged model, from a private file
(:mod:`gateway.compose.runfile`); ``stop``, ``start``, ``restart`` and ``down`` act on the last
judged model, or by the project label when none is kept, never on the files as they are by then.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from typing import Any, Literal

import anyio
from anyio import to_thread

from ..audit import AuditLog, Intent
from ..auth.stacksecrets import StackSecrets
from ..catalog import StackCatalog, StackView
from ..errors import AuditUnavailable, GatewayError, InvalidInput, PolicyRefused, PolicyViolation, ShuttingDown
from ..metrics import CommandExecutionMetrics, ControlPlane
from ..models import ActionResult
from ..policy.guard import refusal
from ..stacks import Stack, validate_services
from .cli import ComposeCli, EventLog, ProgressCallback
from .runfile import RunFile, RunFiles
from .running import RunningCommands

__all__ = ["EventLog", "Lifecycle", "ServiceAction", "SERVICE_ACTIONS"]

logger = logging.getLogger(__name__)

ServiceAction = Literal["restart", "start", "stop"]
SERVICE_ACTIONS: tuple[ServiceAction, ...] = ("restart", "start", "stop")


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
        runs: RunFiles,
        secrets: StackSecrets | None = None,
    ) -> None:
        self.catalog = catalog
        # Where a stack's secrets come from (gateway.secretrefs); without Vault, a stack naming one is refused at up.
        self.secrets = secrets or StackSecrets()
        # The judged models Compose runs, kept in the state dir (see gateway.compose.runfile).
        self.runs = runs
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
            self.catalog.stack_changed(project)
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

        ``up`` judges the stack's files as they are now (inside the project's lock, so a write through
        the gateway cannot slip in between), refuses unless the guard allows them, keeps the judged
        model as the stack's run file and runs Compose on that file. Every other action acts on the
        kept run file, or by the project label when there is none: the files as they are now are not
        read, so a key or hook added since the last ``up`` never runs. A stack on Docker Swarm goes to
        :meth:`_swarm`.
        """
        if action == "up":
            cli = await self.catalog.compose.get()
            view = await self.catalog.judged(stack, cli)
            assert view.verdict is not None
            if not view.verdict.allowed:
                raise refusal(stack.name, "up", view.verdict)
            # Secrets are read from Vault before anything runs (most stacks have none).
            model, values = (
                await self.secrets.prepare(stack.name, view.model) if view.secret_names else (view.model, {})
            )
            run = await to_thread.run_sync(self.runs.write, stack.name, model, view.profiles)
            run = replace(run, env=values)
            if view.target.target == "swarm":
                await self._swarm(action, view, arguments, on_event, judged=await _stack_model(run, cli, stack.name))
                return " (Docker Swarm)"
            await run.run(cli, stack.name, args, on_event)
            return ""
        view = await self.catalog.acting(stack)
        if view.target.target == "swarm":
            await self._swarm(action, view, arguments, on_event)
            if action == "down":
                await to_thread.run_sync(self.runs.remove, stack.name)
            return " (Docker Swarm)"
        cli = await self.catalog.compose.get()
        kept = await to_thread.run_sync(self.runs.kept, stack.name)
        if kept is not None:
            kept_model = await to_thread.run_sync(self.runs.read, stack.name)
            kept = replace(kept, env=await self.secrets.for_action(stack.name, kept_model, action))
            await kept.run(cli, stack.name, args, on_event)
            if action == "down":
                await to_thread.run_sync(self.runs.remove, stack.name)
            return ""
        # Compose finds no file in its neutral working directory and acts on the labelled containers.
        await cli.run(stack.name, args, progress=on_event)
        if stack.external:
            return ""
        logger.info("stack %s has no judged model kept; %s acts on its containers by label", stack.name, action)
        return (
            f"; no judged model of it is kept (it was not brought up by this gateway since), so {action} "
            "acted on the project's containers by their compose project label"
        )

    async def _swarm(
        self,
        action: str,
        view: StackView,
        arguments: dict[str, Any],
        on_event: ProgressCallback,
        *,
        judged: dict[str, Any] | None = None,
    ) -> None:
        """The action on a swarm stack. ``up`` deploys ``judged``: the judged model, as Compose reads it
        back from the run file with the stack's profiles (the services and networks it would run)."""
        swarm = self.catalog.swarm
        services = arguments.get("services")
        name = view.name
        if action == "up":
            assert judged is not None
            await swarm.deploy(
                name,
                judged,
                resolve_image=view.target.resolve_image,
                services=services,
                wait=bool(arguments.get("wait")),
                progress=on_event,
            )
        elif action == "down":
            await swarm.remove(name, volumes=bool(arguments.get("volumes")), progress=on_event)
        elif action == "restart":
            await swarm.restart(name, services, on_event)
        elif action == "start":
            await swarm.start(name, services, on_event)
        elif action == "stop":
            await swarm.stop(name, services, on_event)
        else:  # pragma: no cover - the tools offer no other action
            raise InvalidInput(f"{action} is not an action on a swarm stack")


async def _stack_model(run: RunFile, cli: ComposeCli, project: str) -> dict[str, Any]:
    """The judged model as Compose reads it back from its run file with the stack's profiles: only the
    services (and the networks and volumes they use) that ``up`` would run.

    Raises:
        ComposeFailed: Compose's own error.
        GatewayError: Compose printed something that is not a JSON object.
    """
    output = await run.run(cli, project, ["config", "--format", "json"])
    try:
        model = json.loads(output.stdout)
    except json.JSONDecodeError as exc:
        raise GatewayError(f"docker compose config printed something that is not JSON: {exc}") from exc
    if not isinstance(model, dict):
        raise GatewayError("docker compose config printed JSON that is not an object")
    return model
