"""Swarm through the Engine API: the blocking calls behind :mod:`gateway.swarm.backend`, run in worker threads.

It reads a stack's services and tasks by the ``com.docker.stack.namespace`` label, updates services
from the spec and version it just read, and says whether an action has converged. Each call goes
through the engine's own connection (:meth:`gateway.engine.client.Engine.request`, on the event loop):
the same transport, deadline and breaker as every read.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import anyio

from ..engine.blocking import run_blocking
from ..engine.client import Engine
from ..engine.connection import Query
from ..engine.transport import EngineRefused
from ..errors import InvalidInput, SwarmFailed, SwarmUnavailable
from ..models import ServiceStatus, SwarmNode
from .stackfile import TARGET_KEY
from .tasks import NAMESPACE_LABEL, is_failure, node_rows, service_name, task_rows

__all__ = ["SwarmApi", "StackCounts", "STOPPED_REPLICAS_LABEL", "replicas"]

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


class SwarmApi:
    """Blocking Engine API calls on the engine's swarm."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _call(self, method: str, path: str, query: Query | None = None, body: Any = None) -> Any:
        """Blocking. One Engine API call, its JSON answer.

        Raises:
            EngineUnavailable: the engine cannot be reached.
            EngineRefused: an error status.
        """
        return run_blocking(self.engine.request, method, path, query, body)

    def _get(self, path: str, **filters: str) -> Any:
        return self._call("GET", path, {"filters": {k: [v] for k, v in filters.items()}} if filters else None)

    def check_manager(self, project: str) -> None:
        """Blocking. Return if the engine is a swarm manager, else say how to make it one.

        Raises:
            SwarmUnavailable: not in a swarm, a worker, or a locked swarm.
        """
        swarm = self._get("/info").get("Swarm") or {}
        state = swarm.get("LocalNodeState")
        if state == "active" and swarm.get("ControlAvailable"):
            return
        where = f"the engine {self.engine.connection.label}"
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

    async def services_async(self, project: str | None) -> list[dict[str, Any]]:
        """The stack's services (or every stack's); empty where the engine is no swarm manager."""
        label = f"{NAMESPACE_LABEL}={project}" if project else NAMESPACE_LABEL
        try:
            services: list[dict[str, Any]] = await self.engine.request("GET", "/services", _label(label))
        except EngineRefused as exc:
            if exc.status == 503:  # "This node is not a swarm manager": so there are no swarm stacks
                return []
            raise
        return services

    def services(self, project: str | None) -> list[dict[str, Any]]:
        """Blocking :meth:`services_async`."""
        return run_blocking(self.services_async, project)

    async def tasks_async(self, project: str | None) -> list[dict[str, Any]]:
        label = f"{NAMESPACE_LABEL}={project}" if project else NAMESPACE_LABEL
        tasks: list[dict[str, Any]] = await self.engine.request("GET", "/tasks", _label(label))
        return tasks

    def tasks(self, project: str | None) -> list[dict[str, Any]]:
        """Blocking :meth:`tasks_async`."""
        return run_blocking(self.tasks_async, project)

    def select(self, project: str, services: list[str] | None) -> list[dict[str, Any]]:
        found = self.services(project)
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

    async def stacks_async(self) -> dict[str, StackCounts]:
        """Every swarm stack the engine manages, by name; empty when it manages none."""
        services = await self.services_async(None)
        if not services:
            return {}
        names = {str(s["Spec"].get("Labels", {}).get(NAMESPACE_LABEL)) for s in services}
        counts = {name: [0, 0] for name in names}
        for task in await self.tasks_async(None):
            name = (task.get("Spec", {}).get("ContainerSpec", {}).get("Labels") or {}).get(NAMESPACE_LABEL)
            if name in counts and task.get("DesiredState") not in ("shutdown", "remove"):
                counts[name][0] += 1
                counts[name][1] += task.get("Status", {}).get("State") == "running"
        return {name: StackCounts(*c) for name, c in counts.items()}

    def stacks(self) -> dict[str, StackCounts]:
        """Blocking :meth:`stacks_async`."""
        return run_blocking(self.stacks_async)

    def has_stack(self, project: str) -> bool:
        """Blocking. Whether the swarm runs services of a stack called ``project``."""
        return bool(self.services(project))

    def ps(self, project: str) -> list[ServiceStatus]:
        """Blocking. One entry per current task of the stack (see :func:`task_rows`)."""
        return self.ps_nodes(project)[0]

    def ps_nodes(self, project: str) -> tuple[list[ServiceStatus], list[SwarmNode]]:
        """Blocking :meth:`ps_nodes_async`."""
        return run_blocking(self.ps_nodes_async, project)

    async def ps_nodes_async(self, project: str) -> tuple[list[ServiceStatus], list[SwarmNode]]:
        """:meth:`ps`, and the swarm's nodes with the stack's tasks on each; both empty when the stack
        has no service.

        After the services, the tasks, the nodes and the local containers are asked side by side: to a
        manager across a network, ``ps`` costs two round trips rather than four.

        Raises:
            EngineUnavailable: the engine cannot be reached.
            EngineRefused: an error status.
        """
        services = await self.services_async(project)
        if not services:
            return [], []
        label = _label(f"{NAMESPACE_LABEL}={project}")
        # Health lives on the container, which only the node running it knows: shown for local tasks.
        tasks, nodes, local = await _side_by_side(
            self.engine.request("GET", "/tasks", label),
            self.engine.request("GET", "/nodes"),
            self.engine.request("GET", "/containers/json", {"all": True, **label}),
        )
        rows = task_rows(project, services, tasks, _hostnames(nodes), local)
        return rows, node_rows(nodes, rows)

    def node_names(self) -> dict[str, str | None]:
        """Blocking. The swarm's nodes: hostname by node id."""
        return _hostnames(self._get("/nodes"))

    def update(
        self,
        svc: dict[str, Any],
        *,
        force: bool = False,
        labels: dict[str, str] | None = None,
        replicas: int | None = None,
    ) -> None:
        """Update one service from the spec and version just read: a concurrent change is refused, not lost.

        The whole spec goes back with the changes, as ``docker service update`` sends it.
        """
        spec = dict(svc["Spec"])
        template = dict(spec["TaskTemplate"])
        if force:
            template["ForceUpdate"] = int(template.get("ForceUpdate") or 0) + 1
        spec["TaskTemplate"] = template
        if replicas is not None:
            spec["Mode"] = {"Replicated": {"Replicas": replicas}}
        if labels is not None:
            spec["Labels"] = labels
        self._call("POST", f"/services/{svc['ID']}/update", {"version": svc["Version"]["Index"]}, spec)

    def running(self, project: str, names: list[str], known: set[str]) -> tuple[bool, str]:
        """Every selected service runs all its replicas, no update is under way; or raise on repeated failures."""
        services = {service_name(project, s): s for s in self.services(project)}
        tasks = self.tasks(project)
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
            want = replicas(svc) if "Replicated" in svc["Spec"].get("Mode", {}) else max(len(current), 1)
            if running < want or update in ("updating", "rollback_started"):
                done = False
            # A task the scheduler cannot place says why (no suitable node, ...): worth seeing while waiting.
            unplaced = [
                t["Status"]["Err"] for t in current if t["Status"].get("State") == "pending" and t["Status"].get("Err")
            ]
            parts.append(
                f"{name} {running}/{want}" + (f" ({len(unplaced)} pending: {unplaced[0]})" if unplaced else "")
            )
        return done, "running: " + ", ".join(parts)

    def updated(self, project: str, svc: dict[str, Any], started_before: str | None) -> tuple[bool, str]:
        name = service_name(project, svc)
        status = self._call("GET", f"/services/{svc['ID']}").get("UpdateStatus") or {}
        if status.get("StartedAt") == started_before:
            return False, f"{name}: waiting for the update to start"
        state = status.get("State")
        if state in ("paused", "rollback_started", "rollback_paused", "rollback_completed"):
            raise SwarmFailed(
                f"the rolling restart of service '{name}' of swarm stack '{project}' {state}: {status.get('Message')}"
            )
        return state == "completed", f"{name}: {status.get('Message') or state}"

    def stopped(self, project: str, names: list[str]) -> tuple[bool, str]:
        ids = {s["ID"] for s in self.services(project) if service_name(project, s) in names}
        live = [t for t in self.tasks(project) if t.get("ServiceID") in ids and not _terminal(t)]
        return not live, f"stopping: {len(live)} task(s) still running"

    def gone(self, project: str) -> tuple[bool, str]:
        label = f"{NAMESPACE_LABEL}={project}"
        tasks = self._get("/tasks", label=label)
        containers = self._call("GET", "/containers/json", {"all": True, "filters": {"label": [label]}})
        networks = self._get("/networks", label=label)
        if networks and not tasks and not containers:
            for network in networks:
                self._remove_network(network["Id"])
            networks = self._get("/networks", label=label)
        left = len(tasks) + len(containers) + len(networks)
        text = f"removing: {len(tasks)} task(s), {len(containers)} container(s), {len(networks)} network(s) left"
        return left == 0, text

    def _remove_network(self, network_id: str) -> None:
        try:
            self._call("DELETE", f"/networks/{network_id}")
        except EngineRefused as exc:
            if exc.status != 404:
                # Still in use on some node: the next poll tries again.
                logger.debug("network %s not removed yet: %s", network_id, exc)

    def remove_volumes(self, project: str) -> list[str]:
        volumes = self._get("/volumes", label=f"{NAMESPACE_LABEL}={project}").get("Volumes") or []
        for volume in volumes:
            self._call("DELETE", f"/volumes/{volume['Name']}")
        return [str(v["Name"]) for v in volumes]


async def _side_by_side(*calls: Awaitable[Any]) -> list[Any]:
    """The answers of ``calls``, awaited at once, in order; the first failure raised as itself.

    Raises:
        Exception: what the first call to fail raised (not wrapped in an exception group).
    """
    answers: list[Any] = [None] * len(calls)

    async def one(index: int, call: Awaitable[Any]) -> None:
        answers[index] = await call

    try:
        async with anyio.create_task_group() as tg:
            for index, call in enumerate(calls):
                tg.start_soon(one, index, call)
    except BaseExceptionGroup as group:
        # The callers translate the engine's errors; a group would slip past their handlers. A
        # cancellation stays as it came.
        if all(isinstance(exc, Exception) for exc in group.exceptions):
            raise group.exceptions[0] from None
        raise
    return answers


def _hostnames(nodes: list[dict[str, Any]]) -> dict[str, str | None]:
    return {n["ID"]: n.get("Description", {}).get("Hostname") for n in nodes}


def _label(label: str) -> Query:
    return {"filters": {"label": [label]}}


def replicas(svc: dict[str, Any]) -> int:
    return int(svc["Spec"].get("Mode", {}).get("Replicated", {}).get("Replicas", 0))


def _terminal(task: dict[str, Any]) -> bool:
    return task.get("Status", {}).get("State") in ("complete", "shutdown", "failed", "rejected", "remove", "orphaned")
