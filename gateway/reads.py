"""The read operations: list_stacks, ps, logs and config. They never wait on writes.

list_stacks, ps and logs go through the Engine API (one list call, selected by the project
label); config shows the model the policy guard judged, once it allows the stack (Compose runs
once, for the judgement). list_stacks and ps carry the guard's verdict on each stack folder
(cached by the files' signature). Each call resolves its stack once, into a
:class:`~gateway.catalog.StackView`. Every read that reaches Docker is counted. A swarm stack's ps
and logs read its tasks and service logs instead (:mod:`gateway.swarm.backend`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import regex
from anyio import to_thread

from .catalog import StackCatalog, StackView
from .engine.containers import NUMBER_LABEL, PROJECT_LABEL, SERVICE_LABEL, container_to_status
from .engine.logs import (
    DEFAULT_BYTES,
    DEFAULT_TAIL,
    MAX_BYTES,
    GrepClock,
    NewestLines,
    collect_log,
    compile_grep,
    merge_newest,
    parse_since,
    validate_tail,
)
from .errors import InvalidInput
from .metrics import CommandExecutionMetrics, ControlPlane
from .models import ConfigResult, LogsResult, PsResult, ServiceStatus, StackInfo, StackList, SwarmNode, Verdict
from .policy.guard import refusal
from .stacks import Stack, validate_project_name, validate_services
from .swarm.stackfile import Target

__all__ = ["Reads"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
# How long list_stacks waits for policy marks it has not cached yet.
MARK_BUDGET_S = 0.5


class Reads:
    """Reads on the stacks of one catalog, counted under one control plane."""

    def __init__(self, catalog: StackCatalog, *, plane: ControlPlane, metrics: CommandExecutionMetrics) -> None:
        self.catalog = catalog
        self.engine = catalog.engine
        self.plane = plane
        self.metrics = metrics

    async def _counted(self, tool: str, fn: Callable[..., T], *args: Any) -> T:
        ok = False
        try:
            result = await to_thread.run_sync(fn, *args)
            ok = True
            return result
        finally:
            self.metrics.record_execution(self.plane, tool, ok=ok)

    async def _counted_async(self, tool: str, call: Awaitable[T]) -> T:
        ok = False
        try:
            result = await call
            ok = True
            return result
        finally:
            self.metrics.record_execution(self.plane, tool, ok=ok)

    async def list_stacks(self) -> StackList:
        """Every stack folder, plus running compose projects and swarm stacks that have none (marked external)."""
        stacks = self.catalog.folders()
        # On the event loop: a worker thread's hops there and back were half of this call's CPU.
        containers = await self._counted_async("list_stacks", self.engine.project_containers_async(None))
        swarm = await self.catalog.swarm.stacks_async()
        marks: dict[str, Verdict] = {}
        targets: dict[str, Target] = {}

        async def mark(stack: Stack) -> None:
            try:
                view = await self.catalog.view(stack)
            except Exception as exc:  # noqa: BLE001 - one folder's failure is its own mark, never everyone's error
                logger.warning("cannot mark stack %s", stack.name, exc_info=True)
                marks[stack.name] = Verdict(allowed=False, error=f"the stack cannot be judged ({type(exc).__name__})")
                return
            marks[stack.name] = view.verdict or Verdict(allowed=False, error="not judged")
            targets[stack.name] = view.target.target

        # Marks are cached; a cold one runs Compose, so they run side by side (the guard bounds how
        # many), and a first listing of many stacks waits only so long: the marks that are done are
        # kept, the rest show null and are judged on a later call.
        with anyio.move_on_after(MARK_BUDGET_S):
            async with anyio.create_task_group() as tg:
                for stack in stacks.values():
                    tg.start_soon(mark, stack)
        counts: dict[str, list[int]] = {}
        for container in containers:
            entry = counts.setdefault(container["Labels"][PROJECT_LABEL], [0, 0])
            entry[0] += 1
            entry[1] += container.get("State") == "running"
        for name, tasks in swarm.items():
            if targets.get(name, "compose" if name in counts else "swarm") == "swarm":
                targets[name] = "swarm"
                counts[name] = [tasks.tasks, tasks.running]
        return StackList(
            stacks=[
                StackInfo(
                    name=name,
                    external=name not in stacks,
                    containers=counts.get(name, [0, 0])[0],
                    running=counts.get(name, [0, 0])[1],
                    target=targets.get(name, "compose"),
                    policy=marks.get(name),
                )
                for name in sorted(set(stacks) | set(counts))
            ]
        )

    async def ps(self, project: str) -> PsResult:
        """Every container of the stack, plus defined services that have none (state ``missing``).

        For a swarm stack: one entry per task, with its node and desired state.
        """
        validate_project_name(project)
        view = await self._view(project)
        nodes: list[SwarmNode] = []  # swarm (issue 26): the nodes and the stack's tasks on each
        if view is not None and view.target.target == "swarm":
            services, nodes = await self._counted_async("ps", self.catalog.swarm.ps_nodes_async(project))
        else:
            services = await self._ps_rows(project)
            if view is None and not services:
                services, nodes = await self.catalog.swarm.ps_nodes_async(project)
        if view is None and not services:
            await self.catalog.not_found(project)
        if view is not None:
            present = {s.service for s in services}
            services += [ServiceStatus(service=name, state="missing") for name in view.services if name not in present]
        services.sort(key=lambda s: (s.service, s.container or ""))
        return PsResult(
            project=project, services=services, policy=view.verdict if view is not None else None, nodes=nodes or None
        )

    async def _view(self, project: str) -> StackView | None:
        """The stack folder named ``project`` as the guard last judged it; None for a folder-less name
        (found by its containers or swarm services first)."""
        stack = self.catalog.folder(project)
        return None if stack is None else await self.catalog.view(stack)

    async def _ps_rows(self, project: str) -> list[ServiceStatus]:
        # On the event loop, not in a worker thread: this is most of ps, and the thread hop and
        # docker-py cost several times the request itself (docs/performance.md).
        ok = False
        try:
            containers = await self.engine.project_containers_async(project)
            # The last rows of this stack, by the engine's container entry each came from. A kept or
            # shared listing hands out the same entries, so polls of a steady stack build no rows.
            made = self.catalog.rows.get(project, {})
            rows: dict[int, tuple[dict[str, Any], ServiceStatus]] = {}
            for container in containers:
                # The row made from this very entry still holds: its start time could only have
                # changed with an event or an action of the gateway, and either ends the listing.
                row = made.get(id(container))
                if row is None or row[0] is not container:
                    running = container.get("State") == "running"
                    started = await self.engine.started_at_async(container) if running else None
                    row = (container, container_to_status(container, started))
                rows[id(container)] = row
            if rows:
                self.catalog.rows[project] = rows
            else:
                self.catalog.rows.pop(project, None)  # kept for stacks that have containers, not for any name asked
            ok = True
            return [row for _, row in rows.values()]
        finally:
            self.metrics.record_execution(self.plane, "ps", ok=ok)

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
        view = await self._view(project)
        args = (project, wanted, tail, since_ts, pattern, timestamps, max_bytes)
        if view is not None and view.target.target == "swarm":
            return await self._swarm_logs(*args)
        containers = await self._counted_async("logs", self.engine.project_containers_async(project))
        if not containers and view is None and await self.catalog.swarm_has(project):
            return await self._swarm_logs(*args)
        if not containers:
            await self.catalog.resolve(project)  # a known stack with nothing running has no logs
        if wanted:
            have = {c["Labels"].get(SERVICE_LABEL) for c in containers}
            unknown = sorted(set(wanted) - have)
            if unknown:
                raise InvalidInput(
                    f"stack '{project}' has no container for service(s) {', '.join(unknown)}; "
                    f"services with containers: {', '.join(sorted(str(s) for s in have)) or 'none'}"
                )
            containers = [c for c in containers if c["Labels"].get(SERVICE_LABEL) in wanted]

        # Each container's answer is streamed and only its newest lines that fit max_bytes are held.
        clock = GrepClock()
        parts: list[NewestLines] = []

        async def read(container: dict[str, Any]) -> None:
            def collect() -> NewestLines:
                chunks = self.engine.log_chunks(container["Id"], tail=tail, since=since_ts)
                return collect_log(
                    chunks, _label(container), grep=pattern, timestamps=timestamps, max_bytes=max_bytes, clock=clock
                )

            parts.append(await to_thread.run_sync(collect))

        if len(containers) == 1:
            await read(containers[0])
        else:
            async with anyio.create_task_group() as tg:
                for container in containers:
                    tg.start_soon(read, container)
        lines, dropped = await to_thread.run_sync(lambda: merge_newest(parts, max_bytes=max_bytes))
        return LogsResult(
            project=project, text="\n".join(lines), lines=len(lines), truncated=dropped > 0, dropped_lines=dropped
        )

    async def _swarm_logs(
        self,
        project: str,
        wanted: list[str] | None,
        tail: int,
        since: float | None,
        pattern: regex.Pattern[str] | None,
        timestamps: bool,
        max_bytes: int,
    ) -> LogsResult:
        ok = False
        try:
            result = await self.catalog.swarm.logs(
                project,
                services=wanted,
                tail=tail,
                since=since,
                grep=pattern,
                timestamps=timestamps,
                max_bytes=max_bytes,
            )
            ok = True
            return result
        finally:
            self.metrics.record_execution(self.plane, "logs", ok=ok)

    async def config(self, project: str) -> ConfigResult:
        """The model the policy guard judged (every profile enabled), once it allows the stack: what
        ``up`` runs (with the profiles the stack's ``.env`` turns on), shown without running Compose again.

        Raises:
            PolicyRefused: the guard refuses the stack; PolicyViolation, ComposeFailed: it cannot be judged.
        """
        stack = await self.catalog.resolve(project, need_folder=True)
        started = time.perf_counter()
        ok = False
        try:
            view = await self.catalog.judged(stack, await self.catalog.compose.get())
            assert view.verdict is not None
            if not view.verdict.allowed:
                raise refusal(project, "show the config of", view.verdict)
            ok = True
        finally:
            self.metrics.record_execution(self.plane, "config", ok=ok)
            logger.debug("config %s took %.1f ms", project, (time.perf_counter() - started) * 1000)
        return ConfigResult(project=project, config=view.model)


def _label(container: dict[str, Any]) -> str:
    """How a container's lines are prefixed: its service, with the replica number past the first."""
    service = str(container["Labels"].get(SERVICE_LABEL, "?"))
    number = container["Labels"].get(NUMBER_LABEL, "1")
    return service if number == "1" else f"{service}-{number}"
