"""Swarm stacks: the same tools as Compose stacks, on the swarm the engine manages.

A stack opts in with ``x-compose-agent: {target: swarm}`` in its compose file. ``up`` and ``down``
run ``docker stack deploy`` and ``docker stack rm``; everything else goes through the Engine API:
``ps`` lists tasks, ``logs`` reads service logs, ``restart`` is a rolling forced update, ``stop``
scales to zero and remembers the replicas in a service label (so ``start`` survives a gateway
restart), ``start`` scales back.

The blocking docker-py calls run in worker threads. Waits poll the swarm: it has no event for
"this service converged" that works across engine versions.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import regex
from anyio import to_thread

from .compose import ProgressCallback
from .dockercli import DockerCli
from .engine import Engine
from .errors import InvalidInput, SwarmFailed, SwarmUnavailable
from .logs import bound_lines, merge_logs
from .models import LogsResult, ServiceStatus
from .stackfile import TARGET_KEY, ResolveImage, to_stack_file
from .swarmtasks import NAMESPACE_LABEL, is_failure, service_name, split_service_log, task_labels, task_rows

__all__ = ["SwarmBackend", "StackCounts", "STOPPED_REPLICAS_LABEL"]

logger = logging.getLogger(__name__)

# Set by `stop` on each service it scales to zero: the replicas `start` gives back.
STOPPED_REPLICAS_LABEL = "com.compose-agent.stopped-replicas"
# A service whose new tasks failed this often during one action is reported instead of waited for.
_FAILURES_BEFORE_GIVING_UP = 3


@dataclass(frozen=True)
class StackCounts:
    """A swarm stack as ``list_stacks`` shows it: its current tasks, and how many of them run."""

    tasks: int
    running: int


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
        self._cli = cli
        self._cli_lock = threading.Lock()
        self.converge_timeout = converge_timeout
        self.poll_interval = poll_interval
        self.settle = settle

    # -- the engine ------------------------------------------------------------------------------

    def _docker(self) -> DockerCli:
        with self._cli_lock:
            if not isinstance(self._cli, DockerCli):
                self._cli = self._cli()
            return self._cli

    def check_manager(self, project: str) -> None:
        """Blocking. Return if the engine is a swarm manager, else say how to make it one.

        Raises:
            SwarmUnavailable: not in a swarm, a worker, or a locked swarm.
        """
        with self.engine.translate():
            swarm = self.engine.client.info().get("Swarm") or {}
        state = swarm.get("LocalNodeState")
        if state == "active" and swarm.get("ControlAvailable"):
            return
        where = f"the engine at DOCKER_HOST={self.engine.docker_host}"
        if state == "active":
            why = (
                f"{where} is a swarm worker, not a manager: point the gateway at a manager node "
                "(DOCKER_HOST, see docs/swarm.md), or promote this one with `docker node promote`"
            )
        elif state == "locked":
            why = f"the swarm of {where} is locked: unlock it with `docker swarm unlock`"
        elif state in ("pending", "error"):
            why = f"{where} is {state} in its swarm ({swarm.get('Error') or 'no detail'}); see `docker info`"
        else:
            why = (
                f"{where} is not part of a swarm: run `docker swarm init` there (or join it to a swarm as a "
                f"manager), or remove the {TARGET_KEY} block to run the stack with Compose"
            )
        raise SwarmUnavailable(f"stack '{project}' asks for Docker Swarm ({TARGET_KEY}: target: swarm), but {why}")

    def _services(self, project: str | None) -> list[dict[str, Any]]:
        """The stack's services (or every stack's); empty where the engine is no swarm manager."""
        import docker.errors

        label = f"{NAMESPACE_LABEL}={project}" if project else NAMESPACE_LABEL
        with self.engine.translate():
            try:
                services: list[dict[str, Any]] = self.engine.client.services(filters={"label": label})
            except docker.errors.APIError as exc:
                if exc.status_code == 503:  # "This node is not a swarm manager": so there are no swarm stacks
                    return []
                raise
        return services

    def _tasks(self, project: str | None) -> list[dict[str, Any]]:
        label = f"{NAMESPACE_LABEL}={project}" if project else NAMESPACE_LABEL
        with self.engine.translate():
            tasks: list[dict[str, Any]] = self.engine.client.tasks(filters={"label": label})
        return tasks

    def _select(self, project: str, services: list[str] | None) -> list[dict[str, Any]]:
        found = self._services(project)
        if not found:
            raise SwarmFailed(f"swarm stack '{project}' has no services; bring it up first")
        if not services:
            return sorted(found, key=lambda s: str(s["Spec"]["Name"]))
        by_name = {service_name(project, s): s for s in found}
        unknown = sorted(set(services) - set(by_name))
        if unknown:
            raise InvalidInput(
                f"swarm stack '{project}' has no service(s) {', '.join(unknown)}; its services: "
                f"{', '.join(sorted(by_name))}"
            )
        return [by_name[name] for name in services]

    # -- reads -----------------------------------------------------------------------------------

    def stacks(self) -> dict[str, StackCounts]:
        """Blocking. Every swarm stack the engine manages, by name; empty when it manages none."""
        services = self._services(None)
        if not services:
            return {}
        names = {str(s["Spec"].get("Labels", {}).get(NAMESPACE_LABEL)) for s in services}
        counts = {name: [0, 0] for name in names}
        for task in self._tasks(None):
            name = (task.get("Spec", {}).get("ContainerSpec", {}).get("Labels") or {}).get(NAMESPACE_LABEL)
            if name in counts and task.get("DesiredState") not in ("shutdown", "remove"):
                counts[name][0] += 1
                counts[name][1] += task.get("Status", {}).get("State") == "running"
        return {name: StackCounts(*c) for name, c in counts.items()}

    def ps(self, project: str) -> list[ServiceStatus]:
        """Blocking. One entry per current task of the stack (see :func:`task_rows`)."""
        services = self._services(project)
        if not services:
            return []
        tasks = self._tasks(project)
        with self.engine.translate():
            nodes = {n["ID"]: n.get("Description", {}).get("Hostname") for n in self.engine.client.nodes()}
            # Health lives on the container, which only the node running it knows: shown for local tasks.
            local = self.engine.client.containers(all=True, filters={"label": f"{NAMESPACE_LABEL}={project}"})
        return task_rows(project, services, tasks, nodes, local)

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
        selected = await to_thread.run_sync(self._select, project, services)

        def labels() -> dict[str, str]:
            with self.engine.translate():
                nodes = {n["ID"]: n.get("Description", {}).get("Hostname") for n in self.engine.client.nodes()}
            return task_labels(project, self._services(project), self._tasks(project), nodes)

        by_task = await to_thread.run_sync(labels)
        streams: list[tuple[str, list[bytes]]] = []

        async def read(svc: dict[str, Any]) -> None:
            def fetch() -> bytes:
                with self.engine.translate():
                    chunks = self.engine.client.service_logs(
                        svc["ID"], stdout=True, stderr=True, timestamps=True, details=True, tail=tail, since=since
                    )
                    return b"".join(chunks)

            data = await to_thread.run_sync(fetch)
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
            InvalidInput: the model has something Swarm would widen (see :mod:`gateway.stackfile`).
            SwarmFailed: the CLI refused the stack, or (with ``wait``) the tasks kept failing.
        """
        await to_thread.run_sync(self.check_manager, project)
        stack_file = to_stack_file(model, services)
        cli = await to_thread.run_sync(self._docker)
        events: list[str] = []
        for note in stack_file.notes:
            await _emit(note, events, progress)
        before = {t["ID"] for t in await to_thread.run_sync(self._tasks, project)}
        args = ["stack", "deploy", "--compose-file", "-", "--resolve-image", resolve_image, *cli.detach_flag]
        if not services:
            args.append("--prune")
        document = json.dumps(stack_file.document).encode()
        await cli.run([*args, project], stdin=document, progress=progress, events=events)
        if wait:
            names = services or sorted(stack_file.document["services"])
            check = partial(self._running, project, names, before)
            await self._converge(project, check, progress, events, settle=self.settle)
        return events

    async def remove(
        self, project: str, *, volumes: bool = False, progress: ProgressCallback | None = None
    ) -> list[str]:
        """``docker stack rm``, then wait until its tasks, containers and networks are gone.

        With ``volumes``, also the stack's volumes on this node (Swarm never removes volumes, and
        those on other nodes are out of this engine's reach).
        """
        await to_thread.run_sync(self.check_manager, project)
        cli = await to_thread.run_sync(self._docker)
        events: list[str] = []
        try:
            await cli.run(["stack", "rm", project], progress=progress, events=events)
        except SwarmFailed:
            # The CLI removes networks right after the services, while their tasks still stop; the
            # manager refuses those, and the wait below removes them once the tasks are gone.
            if await to_thread.run_sync(self._services, project):
                raise
        await self._converge(project, partial(self._gone, project), progress, events)
        if volumes:
            for name in await to_thread.run_sync(self._remove_volumes, project):
                await _emit(f"Removed volume {name}", events, progress)
        return events

    async def restart(
        self, project: str, services: list[str] | None = None, progress: ProgressCallback | None = None
    ) -> list[str]:
        """A rolling ``docker service update --force`` of each service in turn, each to completion."""
        await to_thread.run_sync(self.check_manager, project)
        events: list[str] = []
        for svc in await to_thread.run_sync(self._select, project, services):
            name = service_name(project, svc)
            if _replicas(svc) == 0:
                await _emit(f"{name}: scaled to 0, nothing to restart", events, progress)
                continue
            started = (svc.get("UpdateStatus") or {}).get("StartedAt")
            await to_thread.run_sync(partial(self._update, svc, force=True))
            await _emit(f"{name}: rolling restart", events, progress)
            await self._converge(project, partial(self._updated, project, svc, started), progress, events)
        return events

    async def stop(
        self, project: str, services: list[str] | None = None, progress: ProgressCallback | None = None
    ) -> list[str]:
        """Scale each service to 0, remembering its replicas in a label; wait until its tasks stopped."""
        await to_thread.run_sync(self.check_manager, project)
        selected = await to_thread.run_sync(self._select, project, services)
        global_ = [service_name(project, s) for s in selected if "Replicated" not in s["Spec"].get("Mode", {})]
        if global_:
            raise InvalidInput(
                f"service(s) {', '.join(global_)} of swarm stack '{project}' are not replicated (global or job), "
                "so they cannot be scaled to 0; stop the others by name, or `down` the stack"
            )
        events: list[str] = []
        for svc in selected:
            name, replicas = service_name(project, svc), _replicas(svc)
            if replicas == 0:
                await _emit(f"{name}: already scaled to 0", events, progress)
                continue
            labels = {**(svc["Spec"].get("Labels") or {}), STOPPED_REPLICAS_LABEL: str(replicas)}
            await to_thread.run_sync(partial(self._update, svc, labels=labels, replicas=0))
            await _emit(f"{name}: scaled from {replicas} to 0", events, progress)
        names = [service_name(project, s) for s in selected]
        await self._converge(project, partial(self._stopped, project, names), progress, events)
        return events

    async def start(
        self, project: str, services: list[str] | None = None, progress: ProgressCallback | None = None
    ) -> list[str]:
        """Scale each stopped service back to the replicas it had; wait until they run."""
        await to_thread.run_sync(self.check_manager, project)
        selected = await to_thread.run_sync(self._select, project, services)
        before = {t["ID"] for t in await to_thread.run_sync(self._tasks, project)}
        events: list[str] = []
        for svc in selected:
            name = service_name(project, svc)
            labels = dict(svc["Spec"].get("Labels") or {})
            remembered = labels.pop(STOPPED_REPLICAS_LABEL, None)
            if remembered is None:
                await _emit(f"{name}: not stopped by the gateway, left at {_replicas(svc)}", events, progress)
                continue
            await to_thread.run_sync(partial(self._update, svc, labels=labels, replicas=int(remembered)))
            await _emit(f"{name}: scaled from 0 to {remembered}", events, progress)
        names = [service_name(project, s) for s in selected]
        check = partial(self._running, project, names, before)
        await self._converge(project, check, progress, events, settle=self.settle)
        return events

    # -- helpers ---------------------------------------------------------------------------------

    def _update(
        self,
        svc: dict[str, Any],
        *,
        force: bool = False,
        labels: dict[str, str] | None = None,
        replicas: int | None = None,
    ) -> None:
        """Update one service from the spec and version just read: a concurrent change is refused, not lost."""
        spec = svc["Spec"]
        template = dict(spec["TaskTemplate"])
        if force:
            template["ForceUpdate"] = int(template.get("ForceUpdate") or 0) + 1
        mode = spec.get("Mode") if replicas is None else {"Replicated": {"Replicas": replicas}}
        with self.engine.translate():
            self.engine.client.update_service(
                svc["ID"],
                svc["Version"]["Index"],
                task_template=template,
                name=spec["Name"],
                labels=spec.get("Labels") if labels is None else labels,
                mode=mode,
                update_config=spec.get("UpdateConfig"),
                rollback_config=spec.get("RollbackConfig"),
                endpoint_spec=spec.get("EndpointSpec"),
            )

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

    def _running(self, project: str, names: list[str], known: set[str]) -> tuple[bool, str]:
        """Every selected service runs all its replicas, no update is under way; or raise on repeated failures."""
        services = {service_name(project, s): s for s in self._services(project)}
        tasks = self._tasks(project)
        done, parts = True, []
        for name in names:
            svc = services.get(name)
            if svc is None:
                return False, f"{name}: waiting for the service"
            mine = [t for t in tasks if t.get("ServiceID") == svc["ID"]]
            failed = [t for t in mine if t["ID"] not in known and is_failure(t)]
            if len(failed) >= _FAILURES_BEFORE_GIVING_UP:
                newest = max(failed, key=lambda t: str(t.get("UpdatedAt", "")))
                error = newest["Status"].get("Err") or newest["Status"].get("State")
                raise SwarmFailed(
                    f"service '{name}' of swarm stack '{project}' keeps failing ({len(failed)} tasks): {error}"
                )
            update = (svc.get("UpdateStatus") or {}).get("State")
            if update in ("paused", "rollback_paused", "rollback_completed"):
                message = (svc.get("UpdateStatus") or {}).get("Message", "")
                raise SwarmFailed(f"the update of service '{name}' of swarm stack '{project}' {update}: {message}")
            current = [t for t in mine if t.get("DesiredState") == "running"]
            running = sum(t["Status"].get("State") == "running" for t in current)
            want = _replicas(svc) if "Replicated" in svc["Spec"].get("Mode", {}) else max(len(current), 1)
            if running < want or update in ("updating", "rollback_started"):
                done = False
            parts.append(f"{name} {running}/{want}")
        return done, "running: " + ", ".join(parts)

    def _updated(self, project: str, svc: dict[str, Any], started_before: str | None) -> tuple[bool, str]:
        name = service_name(project, svc)
        with self.engine.translate():
            status = self.engine.client.inspect_service(svc["ID"]).get("UpdateStatus") or {}
        if status.get("StartedAt") == started_before:
            return False, f"{name}: waiting for the update to start"
        state = status.get("State")
        if state in ("paused", "rollback_started", "rollback_paused", "rollback_completed"):
            raise SwarmFailed(
                f"the rolling restart of service '{name}' of swarm stack '{project}' {state}: {status.get('Message')}"
            )
        return state == "completed", f"{name}: {status.get('Message') or state}"

    def _stopped(self, project: str, names: list[str]) -> tuple[bool, str]:
        ids = {s["ID"] for s in self._services(project) if service_name(project, s) in names}
        live = [t for t in self._tasks(project) if t.get("ServiceID") in ids and not _terminal(t)]
        return not live, f"stopping: {len(live)} task(s) still running"

    def _gone(self, project: str) -> tuple[bool, str]:
        label = {"label": f"{NAMESPACE_LABEL}={project}"}
        with self.engine.translate():
            tasks = self.engine.client.tasks(filters=label)
            containers = self.engine.client.containers(all=True, filters=label)
            networks = self.engine.client.networks(filters=label)
            if networks and not tasks and not containers:
                for network in networks:
                    self._remove_network(network["Id"])
                networks = self.engine.client.networks(filters=label)
        left = len(tasks) + len(containers) + len(networks)
        text = f"removing: {len(tasks)} task(s), {len(containers)} container(s), {len(networks)} network(s) left"
        return left == 0, text

    def _remove_network(self, network_id: str) -> None:
        import docker.errors

        try:
            self.engine.client.remove_network(network_id)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            # Still in use on some node: the next poll tries again.
            logger.debug("network %s not removed yet: %s", network_id, exc)

    def _remove_volumes(self, project: str) -> list[str]:
        with self.engine.translate():
            volumes = self.engine.client.volumes(filters={"label": f"{NAMESPACE_LABEL}={project}"}).get("Volumes") or []
            for volume in volumes:
                self.engine.client.remove_volume(volume["Name"])
        return [str(v["Name"]) for v in volumes]


def _replicas(svc: dict[str, Any]) -> int:
    return int(svc["Spec"].get("Mode", {}).get("Replicated", {}).get("Replicas", 0))


def _terminal(task: dict[str, Any]) -> bool:
    return task.get("Status", {}).get("State") in ("complete", "shutdown", "failed", "rejected", "remove", "orphaned")


async def _emit(text: str, events: list[str], progress: ProgressCallback | None) -> None:
    events.append(text)
    if progress is not None:
        await progress(text)
