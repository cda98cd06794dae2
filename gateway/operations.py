"""The operations API: every compose operation the gateway offers, independent of MCP.

The MCP server calls it; the status panel calls it in-process in legacy mode. Reads go through
the Engine API and never wait on writes; writes go through the Compose CLI, one at a time per
project. Every operation that reaches Docker is counted, and every mutation is audited.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
from anyio import to_thread

from .audit import AuditLog
from .compose import ComposeCli, ProgressCallback
from .config import Settings
from .engine import NUMBER_LABEL, SERVICE_LABEL, Engine, container_to_status
from .errors import GatewayError, InvalidInput, PolicyViolation, StackNotFound
from .logs import (
    DEFAULT_BYTES,
    DEFAULT_TAIL,
    MAX_BYTES,
    bound_lines,
    compile_grep,
    merge_logs,
    parse_since,
    split_log,
    validate_tail,
)
from .metrics import CommandExecutionMetrics, ControlPlane
from .models import ActionResult, ConfigResult, LogsResult, PsResult, ServiceStatus, StackInfo, StackList
from .stacks import Stack, discover_stacks, find_stack, validate_project_name, validate_services

__all__ = ["ComposeOperations"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
# How long a stack's defined services are trusted without re-checking its files' mtimes.
_DEFINED_TTL_S = 30.0
# How long a failed search for the Compose CLI stands before the next call searches again.
_LOCATE_RETRY_S = 30.0


@dataclass
class _Defined:
    signature: tuple[tuple[str, float, int], ...]
    checked: float
    services: list[str]


class ComposeOperations:
    """Compose operations on the stacks under one stacks dir, plus running folder-less projects."""

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
    ) -> None:
        # Absolute, because the Compose CLI runs with the stack's folder as its working directory.
        self.stacks_dir = stacks_dir.resolve()
        self.engine = engine
        self._cli = cli
        self.plane = plane
        self.metrics = metrics or CommandExecutionMetrics()
        self.audit = audit
        self.self_project = self_project
        self._locks: dict[str, anyio.Lock] = {}
        self._cli_lock = threading.Lock()
        self._cli_failure: tuple[float, GatewayError] | None = None
        self._defined: dict[str, _Defined] = {}

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

        ``environ`` is the environment handed to the Compose CLI (secrets are removed from it).
        """
        env = dict(os.environ if environ is None else environ)
        if settings.docker_host:
            env["DOCKER_HOST"] = settings.docker_host
        engine = Engine(settings.docker_host, timeout=settings.docker_timeout)
        return cls(
            stacks_dir=settings.stacks_dir,
            engine=engine,
            cli=lambda: ComposeCli.locate(settings.compose_bin, env),
            plane=plane,
            metrics=metrics,
            audit=audit,
            self_project=settings.self_project,
        )

    @property
    def cli(self) -> ComposeCli:
        """The Compose CLI, located on first use (once, even when two threads ask together).

        Locating runs subprocesses, so async code awaits :meth:`_compose` instead. A failure is
        remembered for a while rather than retried (and waited for) on every call.

        Raises:
            ComposeNotFound: no usable Compose v2 CLI.
        """
        with self._cli_lock:
            if isinstance(self._cli, ComposeCli):
                return self._cli
            failed = self._cli_failure
            if failed is not None and time.monotonic() - failed[0] < _LOCATE_RETRY_S:
                raise failed[1]
            try:
                self._cli = self._cli()
            except GatewayError as exc:
                self._cli_failure = (time.monotonic(), exc)
                raise
            return self._cli

    async def _compose(self) -> ComposeCli:
        if isinstance(self._cli, ComposeCli):
            return self._cli
        return await to_thread.run_sync(lambda: self.cli)

    def locate_cli(self) -> None:
        """Find the Compose CLI now, logging instead of raising: for a background warm-up at start."""
        try:
            _ = self.cli
        except GatewayError as exc:
            # Reads still work through the Engine API; lifecycle calls will report this again.
            logger.error("%s", exc)

    def close(self) -> None:
        self.engine.close()

    # -- resolution ---------------------------------------------------------------------------

    async def _resolve(self, project: str, *, need_folder: bool = False) -> Stack:
        """The stack named ``project``: a folder, or (when allowed) a running external project.

        Raises:
            InvalidInput: a bad name. StackNotFound: naming the known stacks.
        """
        validate_project_name(project)
        stack = find_stack(self.stacks_dir, project)
        if stack is not None:
            return stack
        containers = await to_thread.run_sync(self.engine.project_containers, project)
        if containers:
            if need_folder:
                raise InvalidInput(
                    f"stack '{project}' is external (it runs, but has no folder under the stacks dir); "
                    f"this needs its compose file: add a folder '{project}' with a compose.yaml"
                )
            return Stack(project)
        known = await self._known_names(discover_stacks(self.stacks_dir))
        listing = ", ".join(known) if known else "none"
        raise StackNotFound(f"stack '{project}' not found; known stacks: {listing}")

    async def _known_names(self, stacks: Mapping[str, Stack]) -> list[str]:
        names = set(stacks)
        try:
            containers = await to_thread.run_sync(self.engine.project_containers, None)
        except GatewayError:
            containers = []
        names.update(c["Labels"]["com.docker.compose.project"] for c in containers)
        return sorted(names)

    def _lock(self, project: str) -> anyio.Lock:
        lock = self._locks.get(project)
        if lock is None:
            lock = self._locks[project] = anyio.Lock()
        return lock

    # -- reads ----------------------------------------------------------------------------------

    async def list_stacks(self) -> StackList:
        """Every stack folder, plus running compose projects that have none (marked external)."""
        stacks = discover_stacks(self.stacks_dir)
        containers = await self._read("list_stacks", self.engine.project_containers, None)
        counts: dict[str, list[int]] = {}
        for container in containers:
            name = container["Labels"]["com.docker.compose.project"]
            entry = counts.setdefault(name, [0, 0])
            entry[0] += 1
            entry[1] += container.get("State") == "running"
        names = sorted(set(stacks) | set(counts))
        return StackList(
            stacks=[
                StackInfo(
                    name=name,
                    external=name not in stacks,
                    containers=counts.get(name, [0, 0])[0],
                    running=counts.get(name, [0, 0])[1],
                )
                for name in names
            ]
        )

    async def ps(self, project: str) -> PsResult:
        """Every container of the stack, plus defined services that have none (state ``missing``)."""
        validate_project_name(project)
        stack = find_stack(self.stacks_dir, project)
        containers = await self._read("ps", self._ps_rows, project)
        if stack is None and not containers:
            await self._resolve(project)  # raises StackNotFound naming the known stacks
        services = containers
        if stack is not None:
            defined = await self._defined_services(stack)
            present = {s.service for s in services}
            services += [ServiceStatus(service=name, state="missing") for name in defined if name not in present]
        services.sort(key=lambda s: (s.service, s.container or ""))
        return PsResult(project=project, services=services)

    def _ps_rows(self, project: str) -> list[ServiceStatus]:
        rows = []
        for container in self.engine.project_containers(project):
            started = self.engine.started_at(container) if container.get("State") == "running" else None
            rows.append(container_to_status(container, started))
        return rows

    async def _defined_services(self, stack: Stack) -> list[str]:
        """The services the stack's compose model defines, from Compose itself, cached by file mtimes."""
        assert stack.folder is not None
        now = time.monotonic()
        cached = self._defined.get(stack.name)
        if cached is not None and now - cached.checked < _DEFINED_TTL_S:
            return cached.services
        signature = _signature(stack.folder)
        if cached is not None and cached.signature == signature:
            cached.checked = now
            return cached.services
        try:
            model = await self._config_model(stack)
        except GatewayError as exc:
            # A broken compose file must not hide the containers that do run; ps reports what it can.
            logger.warning("cannot read the services of stack %s: %s", stack.name, str(exc).splitlines()[0])
            return []
        services_model = model.get("services") or {}
        services = sorted(
            name
            for name, spec in services_model.items()
            if not (
                isinstance(spec, dict) and (spec.get("scale") == 0 or (spec.get("deploy") or {}).get("replicas") == 0)
            )
        )
        self._defined[stack.name] = _Defined(signature, now, services)
        return services

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
        validate_project_name(project)
        wanted = validate_services(services)
        validate_tail(tail)
        since_ts = parse_since(since)
        pattern = compile_grep(grep)
        if not 1024 <= max_bytes <= MAX_BYTES:
            raise InvalidInput(f"max_bytes must be from 1024 to {MAX_BYTES}")
        containers = await self._read("logs", self.engine.project_containers, project)
        if not containers:
            await self._resolve(project)
        if wanted:
            unknown = sorted(set(wanted) - {c["Labels"].get(SERVICE_LABEL) for c in containers})
            if unknown:
                have = sorted({c["Labels"].get(SERVICE_LABEL, "?") for c in containers})
                raise InvalidInput(
                    f"stack '{project}' has no container for service(s) {', '.join(unknown)}; "
                    f"services with containers: {', '.join(have) or 'none'}"
                )
            containers = [c for c in containers if c["Labels"].get(SERVICE_LABEL) in wanted]

        def label(container: dict[str, Any]) -> str:
            service = str(container["Labels"].get(SERVICE_LABEL, "?"))
            number = container["Labels"].get(NUMBER_LABEL, "1")
            return service if number == "1" else f"{service}-{number}"

        async def read(container: dict[str, Any], out: list[tuple[str, list[bytes]]]) -> None:
            data = await to_thread.run_sync(lambda: self.engine.logs(container["Id"], tail=tail, since=since_ts))
            out.append((label(container), split_log(data)))

        streams: list[tuple[str, list[bytes]]] = []
        if len(containers) == 1:
            await read(containers[0], streams)
        else:
            async with anyio.create_task_group() as tg:
                for container in containers:
                    tg.start_soon(read, container, streams)
        merged = merge_logs(sorted(streams))
        lines, dropped = await to_thread.run_sync(
            lambda: bound_lines(merged, grep=pattern, timestamps=timestamps, max_bytes=max_bytes)
        )
        return LogsResult(
            project=project, text="\n".join(lines), lines=len(lines), truncated=dropped > 0, dropped_lines=dropped
        )

    async def config(self, project: str) -> ConfigResult:
        """The stack's compose model as Compose validates and normalises it."""
        stack = await self._resolve(project, need_folder=True)
        started = time.perf_counter()
        ok = False
        try:
            model = await self._config_model(stack)
            ok = True
        finally:
            self.metrics.record_execution(self.plane, "config", ok=ok)
            logger.debug("config %s took %.1f ms", project, (time.perf_counter() - started) * 1000)
        return ConfigResult(project=project, config=model)

    async def _config_model(self, stack: Stack) -> dict[str, Any]:
        output = await (await self._compose()).run(
            stack.name, ["config", "--format", "json"], compose_file=stack.compose_file, cwd=stack.folder
        )
        try:
            model: dict[str, Any] = json.loads(output.stdout)
        except json.JSONDecodeError as exc:
            raise GatewayError(f"docker compose config printed something that is not JSON: {exc}") from exc
        return model

    async def _read(self, tool: str, fn: Callable[..., T], *args: Any) -> T:
        ok = False
        try:
            result = await to_thread.run_sync(fn, *args)
            ok = True
            return result
        finally:
            self.metrics.record_execution(self.plane, tool, ok=ok)

    # -- writes ---------------------------------------------------------------------------------

    async def up(
        self,
        project: str,
        *,
        services: list[str] | None = None,
        wait: bool = False,
        caller: str = "local",
        progress: ProgressCallback | None = None,
    ) -> ActionResult:
        """Create and start the stack's services, detached; with ``wait``, until they are running/healthy."""
        wanted = self._validated_services("up", project, services, caller)
        args = ["up", "--detach", "--remove-orphans"] + (["--wait"] if wait else []) + (wanted or [])
        return await self._mutate(
            "up", project, args, {"services": wanted, "wait": wait}, caller, progress, need_folder=True
        )

    async def down(
        self, project: str, *, volumes: bool = False, caller: str = "local", progress: ProgressCallback | None = None
    ) -> ActionResult:
        """Stop and remove the stack's containers and networks; named volumes are kept unless ``volumes``."""
        args = ["down", "--remove-orphans"] + (["--volumes"] if volumes else [])
        return await self._mutate("down", project, args, {"volumes": volumes}, caller, progress)

    async def restart(
        self,
        project: str,
        *,
        services: list[str] | None = None,
        caller: str = "local",
        progress: ProgressCallback | None = None,
    ) -> ActionResult:
        """Restart the stack's containers, or only those of ``services``."""
        return await self._service_action("restart", project, services, caller, progress)

    async def start(
        self,
        project: str,
        *,
        services: list[str] | None = None,
        caller: str = "local",
        progress: ProgressCallback | None = None,
    ) -> ActionResult:
        """Start the stack's existing, stopped containers; creates nothing (that is ``up``)."""
        return await self._service_action("start", project, services, caller, progress)

    async def stop(
        self,
        project: str,
        *,
        services: list[str] | None = None,
        caller: str = "local",
        progress: ProgressCallback | None = None,
    ) -> ActionResult:
        """Stop the stack's running containers without removing them."""
        return await self._service_action("stop", project, services, caller, progress)

    async def _service_action(
        self,
        action: str,
        project: str,
        services: list[str] | None,
        caller: str,
        progress: ProgressCallback | None,
    ) -> ActionResult:
        wanted = self._validated_services(action, project, services, caller)
        return await self._mutate(action, project, [action, *(wanted or [])], {"services": wanted}, caller, progress)

    def _validated_services(
        self, action: str, project: str, services: list[str] | None, caller: str
    ) -> list[str] | None:
        """Valid service names, or an audited refusal: every mutating call leaves an audit line."""
        try:
            return validate_services(services)
        except GatewayError as exc:
            shown = [str(s)[:100] for s in services or []][:100]
            self.audit_refusal(action, {"project": str(project)[:100], "services": shown}, caller, str(exc))
            raise

    def audit_refusal(self, tool: str, arguments: dict[str, Any], caller: str, reason: str) -> None:
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
            )

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
    ) -> ActionResult:
        arguments = {"project": project, **{k: v for k, v in arguments.items() if v not in (None, False)}}
        started = time.perf_counter()
        try:
            stack = await self._resolve(project, need_folder=need_folder)
            if self.self_project and project == self.self_project:
                raise PolicyViolation(
                    f"refusing to {action} '{project}': the compose-agent itself runs in this project, "
                    "and must not switch off its own supervisor path; manage it from the host"
                )
        except GatewayError as exc:
            self.audit_refusal(action, arguments, caller, str(exc))
            raise
        events: list[str] = []

        async def on_event(text: str) -> None:
            events.append(text)
            if progress is not None:
                await progress(text)

        outcome, error = "error", None
        try:
            async with self._lock(project):
                cli = await self._compose()
                await cli.run(project, args, compose_file=stack.compose_file, cwd=stack.folder, progress=on_event)
            outcome = "ok"
        except anyio.get_cancelled_exc_class():
            outcome, error = "cancelled", "the call was cancelled; the compose process was stopped"
            raise
        except GatewayError as exc:
            error = str(exc)
            raise
        finally:
            duration = (time.perf_counter() - started) * 1000
            self._defined.pop(project, None)
            self.engine.forget_start_times()
            self.metrics.record_execution(self.plane, action, ok=outcome == "ok")
            if self.audit is not None:
                self.audit.write(
                    caller=caller,
                    control_plane=self.plane.value,
                    tool=action,
                    arguments=arguments,
                    outcome=outcome,
                    duration_ms=duration,
                    error=error,
                )
        return ActionResult(
            project=project,
            action=action,
            ok=True,
            services=arguments.get("services"),
            duration_ms=round(duration, 1),
            events=events,
            message=f"{action} finished on '{project}'",
        )


def _signature(folder: Path) -> tuple[tuple[str, float, int], ...]:
    """mtime and size of the files that shape a stack's compose model."""
    parts = []
    for name in (
        "compose.yaml",
        "compose.yml",
        "docker-compose.yml",
        "docker-compose.yaml",
        ".env",
        "compose.override.yaml",
        "compose.override.yml",
        "docker-compose.override.yml",
        "docker-compose.override.yaml",
    ):
        try:
            st = (folder / name).stat()
        except OSError:
            continue
        parts.append((name, st.st_mtime, st.st_size))
    return tuple(parts)
