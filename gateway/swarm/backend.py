"""Swarm stacks: the same tools as Compose stacks, on the swarm the engine manages.

A stack opts in with ``x-compose-agent: {target: swarm}`` in its compose file. ``up`` and ``down``
run ``docker stack deploy`` and ``docker stack rm``; everything else goes through the Engine API:
``ps`` lists tasks, ``logs`` reads service logs, ``restart`` is a rolling forced update, ``stop``
scales to zero and remembers the replicas in a service label (so ``start`` survives a gateway
restart), ``start`` scales back.

The blocking Engine API calls (:mod:`gateway.swarm.api`) run in worker threads. Waits poll the
swarm: it has no event for "this service converged" that works across engine versions.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import regex
from anyio import to_thread

from ..compose.cli import ProgressCallback
from ..engine.client import Engine
from ..engine.logs import bound_lines, merge_logs
from ..errors import InvalidInput, SwarmFailed
from ..models import LogsResult, ServiceStatus, SwarmNode
from .api import STOPPED_REPLICAS_LABEL, StackCounts, SwarmApi, replicas
from .dockercli import DockerCli
from .stackfile import ResolveImage, to_stack_file
from .tasks import service_name, split_service_log, task_labels

__all__ = ["SwarmBackend", "StackCounts", "STOPPED_REPLICAS_LABEL"]

logger = logging.getLogger(__name__)


class SwarmBackend:
    """Swarm operations on the engine's swarm. The caller serialises writes per stack."""

    def __init__(
        self,
        engine: Engine,
        cli: DockerCli | Callable[[], DockerCli],
        *,
        converge_timeout: float = 300.0,
        poll_interval: float = 0.5,
        settle: float = 3.0,
    ) -> None:
        self.engine = engine
        self.api = SwarmApi(engine)
        self._cli = cli
        self._cli_lock = threading.Lock()
        self.converge_timeout = converge_timeout
        self.poll_interval = poll_interval
        self.settle = settle

    def _docker(self) -> DockerCli:
        with self._cli_lock:
            if not isinstance(self._cli, DockerCli):
                self._cli = self._cli()
            return self._cli

    # -- reads (blocking: callers run them in worker threads) ------------------------------------

    def check_manager(self, project: str) -> None:
        """Blocking. Return if the engine is a swarm manager, else say how to make it one.

        Raises:
            SwarmUnavailable: not in a swarm, a worker, or a locked swarm.
        """
        self.api.check_manager(project)

    def stacks(self) -> dict[str, StackCounts]:
        """Blocking. Every swarm stack the engine manages, by name; empty when it manages none."""
        return self.api.stacks()

    async def stacks_async(self) -> dict[str, StackCounts]:
        """:meth:`stacks` on the event loop (no worker thread: a fleet's listing asks every engine at once)."""
        return await self.api.stacks_async()

    def has_stack(self, project: str) -> bool:
        """Blocking. Whether the swarm runs services of a stack called ``project``."""
        return self.api.has_stack(project)

    def ps(self, project: str) -> list[ServiceStatus]:
        """Blocking. One entry per current task of the stack (see :func:`gateway.swarm.tasks.task_rows`)."""
        return self.api.ps(project)

    def ps_nodes(self, project: str) -> tuple[list[ServiceStatus], list[SwarmNode]]:
        """Blocking. :meth:`ps`, and every node of the swarm with the stack's tasks on it."""
        return self.api.ps_nodes(project)

    async def ps_nodes_async(self, project: str) -> tuple[list[ServiceStatus], list[SwarmNode]]:
        """:meth:`ps_nodes` on the event loop (no worker thread)."""
        return await self.api.ps_nodes_async(project)

    async def logs(
        self,
        project: str,
        *,
        services: list[str] | None,
        tail: int,
        since: float | None,
        grep: regex.Pattern[str] | None,
        timestamps: bool,
        max_bytes: int,
    ) -> LogsResult:
        """Service logs, merged in time order, labelled by service (and slot), bounded like Compose logs.

        ``tail`` counts per task, as it counts per container for Compose. Arguments are validated
        by the caller, with the same rules as for Compose stacks.
        """
        if not services and not await to_thread.run_sync(self.api.has_stack, project):
            return LogsResult(project=project, text="", lines=0, truncated=False)  # defined, not deployed
        selected = await to_thread.run_sync(self.api.select, project, services)

        def labels() -> dict[str, str]:
            nodes = self.api.node_names()
            return task_labels(project, self.api.services(project), self.api.tasks(project), nodes)

        by_task = await to_thread.run_sync(labels)
        streams: list[tuple[str, list[bytes]]] = []

        async def read(svc: dict[str, Any]) -> None:
            data = await self.engine.service_log(svc["ID"], tail=tail, since=since)
            streams.extend(split_service_log(service_name(project, svc), data, by_task))

        async with anyio.create_task_group() as tg:
            for svc in selected:
                tg.start_soon(read, svc)
        merged = merge_logs(sorted(streams))
        lines, dropped = await to_thread.run_sync(
            lambda: bound_lines(merged, grep=grep, timestamps=timestamps, max_bytes=max_bytes)
        )
        return LogsResult(
            project=project, text="\n".join(lines), lines=len(lines), truncated=dropped > 0, dropped_lines=dropped
        )

    # -- writes ----------------------------------------------------------------------------------

    async def deploy(
        self,
        project: str,
        model: dict[str, Any],
        *,
        resolve_image: ResolveImage,
        services: list[str] | None = None,
        wait: bool = False,
        progress: ProgressCallback | None = None,
    ) -> list[str]:
        """``docker stack deploy`` of Compose's normalised model; with ``wait``, until every task runs.

        Deploying the whole stack prunes services the model no longer has, as Compose's
        ``--remove-orphans`` does; deploying some ``services`` leaves the others alone.

        Raises:
            SwarmUnavailable: the engine is no swarm manager, or there is no docker CLI.
            InvalidInput: the model has something Swarm would widen (see :mod:`gateway.swarm.stackfile`).
            SwarmFailed: the CLI refused the stack, or (with ``wait``) the tasks kept failing.
        """
        await to_thread.run_sync(self.api.check_manager, project)
        stack_file = to_stack_file(model, services)
        cli = await to_thread.run_sync(self._docker)
        events: list[str] = []
        for note in stack_file.notes:
            await _emit(note, events, progress)
        before = {t["ID"] for t in await to_thread.run_sync(self.api.tasks, project)}
        args = ["stack", "deploy", "--compose-file", "-", "--resolve-image", resolve_image, *cli.detach_flag]
        if not services:
            args.append("--prune")
        document = json.dumps(stack_file.document).encode()
        try:
            await cli.run([*args, project], stdin=document, progress=progress, events=events)
        except SwarmFailed as exc:
            if "Additional property" in str(exc) or " must be " in str(exc):
                raise SwarmFailed(
                    f"{exc}\nSwarm's stack format does not take this field: remove it, or run the stack with "
                    "Compose (docs/swarm.md lists what Swarm ignores and refuses)"
                ) from exc
            raise
        if wait:
            names = services or sorted(stack_file.document["services"])
            check = partial(self.api.running, project, names, before)
            await self._converge(project, check, progress, events, settle=self.settle)
        return events

    async def remove(
        self, project: str, *, volumes: bool = False, progress: ProgressCallback | None = None
    ) -> list[str]:
        """``docker stack rm``, then wait until its tasks, containers and networks are gone.

        With ``volumes``, also the stack's volumes on this node (Swarm never removes volumes, and
        those on other nodes are out of this engine's reach).
        """
        await to_thread.run_sync(self.api.check_manager, project)
        cli = await to_thread.run_sync(self._docker)
        events: list[str] = []
        try:
            await cli.run(["stack", "rm", project], progress=progress, events=events)
        except SwarmFailed:
            # The CLI removes networks right after the services, while their tasks still stop; the
            # manager refuses those, and the wait below removes them once the tasks are gone.
            if await to_thread.run_sync(self.api.services, project):
                raise
        await self._converge(project, partial(self.api.gone, project), progress, events)
        if volumes:
            for name in await to_thread.run_sync(self.api.remove_volumes, project):
                await _emit(f"Removed volume {name}", events, progress)
        return events

    async def restart(
        self, project: str, services: list[str] | None = None, progress: ProgressCallback | None = None
    ) -> list[str]:
        """A rolling ``docker service update --force`` of each service in turn, each to completion."""
        await to_thread.run_sync(self.api.check_manager, project)
        events: list[str] = []
        for svc in await to_thread.run_sync(self.api.select, project, services):
            name = service_name(project, svc)
            if replicas(svc) == 0:
                await _emit(f"{name}: scaled to 0, nothing to restart", events, progress)
                continue
            started = (svc.get("UpdateStatus") or {}).get("StartedAt")
            await to_thread.run_sync(partial(self.api.update, svc, force=True))
            await _emit(f"{name}: rolling restart", events, progress)
            await self._converge(project, partial(self.api.updated, project, svc, started), progress, events)
        return events

    async def stop(
        self, project: str, services: list[str] | None = None, progress: ProgressCallback | None = None
    ) -> list[str]:
        """Scale each service to 0, remembering its replicas in a label; wait until its tasks stopped."""
        await to_thread.run_sync(self.api.check_manager, project)
        selected = await to_thread.run_sync(self.api.select, project, services)
        global_ = [service_name(project, s) for s in selected if "Replicated" not in s["Spec"].get("Mode", {})]
        if global_:
            raise InvalidInput(
                f"service(s) {', '.join(global_)} of swarm stack '{project}' are not replicated (global or job), "
                "so they cannot be scaled to 0; stop the others by name, or `down` the stack"
            )
        events: list[str] = []
        for svc in selected:
            name, count = service_name(project, svc), replicas(svc)
            if count == 0:
                await _emit(f"{name}: already scaled to 0", events, progress)
                continue
            labels = {**(svc["Spec"].get("Labels") or {}), STOPPED_REPLICAS_LABEL: str(count)}
            await to_thread.run_sync(partial(self.api.update, svc, labels=labels, replicas=0))
            await _emit(f"{name}: scaled from {count} to 0", events, progress)
        names = [service_name(project, s) for s in selected]
        await self._converge(project, partial(self.api.stopped, project, names), progress, events)
        return events

    async def start(
        self, project: str, services: list[str] | None = None, progress: ProgressCallback | None = None
    ) -> list[str]:
        """Scale each stopped service back to the replicas it had; wait until they run."""
        await to_thread.run_sync(self.api.check_manager, project)
        selected = await to_thread.run_sync(self.api.select, project, services)
        before = {t["ID"] for t in await to_thread.run_sync(self.api.tasks, project)}
        events: list[str] = []
        for svc in selected:
            name = service_name(project, svc)
            labels = dict(svc["Spec"].get("Labels") or {})
            remembered = labels.pop(STOPPED_REPLICAS_LABEL, None)
            if remembered is None:
                await _emit(f"{name}: not stopped by the gateway, left at {replicas(svc)}", events, progress)
                continue
            await to_thread.run_sync(partial(self.api.update, svc, labels=labels, replicas=int(remembered)))
            await _emit(f"{name}: scaled from 0 to {remembered}", events, progress)
        names = [service_name(project, s) for s in selected]
        check = partial(self.api.running, project, names, before)
        await self._converge(project, check, progress, events, settle=self.settle)
        return events

    # -- waiting ---------------------------------------------------------------------------------

    async def _converge(
        self,
        project: str,
        check: Callable[[], tuple[bool, str]],
        progress: ProgressCallback | None,
        events: list[str],
        *,
        settle: float = 0.0,
    ) -> None:
        """Poll ``check`` until it has said done for ``settle`` seconds in a row, or time out.

        Running tasks must stay running for a moment: a task that exits at once is briefly
        "running" too (the docker CLI waits 5 s for the same reason).
        """
        last = ""
        done_since: float | None = None
        with anyio.move_on_after(self.converge_timeout):
            while True:
                done, text = await to_thread.run_sync(check)
                if text != last:
                    last = text
                    await _emit(text, events, progress)
                now = anyio.current_time()
                done_since = (done_since if done_since is not None else now) if done else None
                if done_since is not None and now - done_since >= settle:
                    return
                await anyio.sleep(self.poll_interval)
        raise SwarmFailed(
            f"swarm stack '{project}' did not converge within {self.converge_timeout:.0f}s ({last}); "
            "see ps for the tasks"
        )


async def _emit(text: str, events: list[str], progress: ProgressCallback | None) -> None:
    events.append(text)
    if progress is not None:
        await progress(text)
