"""Swarm's Engine API objects as the gateway shows them: tasks as ``ps`` rows, service logs by task.

Pure functions over the dicts docker-py returns, so the shapes are tested without a swarm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..engine.containers import parse_status
from ..engine.logs import split_log
from ..models import ServiceStatus, SwarmNode

__all__ = [
    "NAMESPACE_LABEL",
    "TASK_LABEL",
    "is_failure",
    "node_rows",
    "service_name",
    "split_service_log",
    "task_labels",
    "task_rows",
]

# Set by `docker stack deploy` on every service, task, container, network and volume of a stack.
NAMESPACE_LABEL = "com.docker.stack.namespace"
TASK_LABEL = "com.docker.swarm.task.id"
_GONE = ("shutdown", "remove")
_FAILURES = ("failed", "rejected", "orphaned")


def service_name(project: str, svc: Mapping[str, Any]) -> str:
    """The compose service name of a stack's swarm service (``shop_web`` is ``web`` of ``shop``)."""
    name = str(svc["Spec"]["Name"])
    prefix = f"{project}_"
    return name[len(prefix) :] if name.startswith(prefix) else name


def is_failure(task: Mapping[str, Any]) -> bool:
    return task.get("Status", {}).get("State") in _FAILURES


def _slot(task: Mapping[str, Any]) -> str:
    # Replicated tasks have a slot number; a global service has one task per node instead.
    return str(task.get("Slot") or task.get("NodeID") or task["ID"])


def _ports(svc: Mapping[str, Any]) -> list[str]:
    ports = []
    for port in (svc.get("Endpoint") or {}).get("Ports") or []:
        published, target, proto = port.get("PublishedPort"), port.get("TargetPort"), port.get("Protocol", "tcp")
        # Swarm publishes on every address of every node (ingress) or of the task's node (host mode).
        ports.append(f"0.0.0.0:{published}->{target}/{proto}" if published else f"{target}/{proto}")
    return ports


def _by_slot(tasks: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    slots: dict[str, list[Mapping[str, Any]]] = {}
    for task in sorted(tasks, key=lambda t: (str(t.get("CreatedAt", "")), t["Version"]["Index"])):
        slots.setdefault(_slot(task), []).append(task)
    return slots


def task_rows(
    project: str,
    services: Sequence[Mapping[str, Any]],
    tasks: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, str | None],
    local_containers: Sequence[Mapping[str, Any]],
) -> list[ServiceStatus]:
    """One row per current task (the one Swarm drives to run, per slot), in the shape of a Compose row.

    Tasks Swarm has shut down (replaced by a restart or an update) are history and left out. A slot
    whose current task is not running carries the error of its newest failed task. A service scaled
    to 0 is one row in state ``stopped``; one with no current task shows its newest task per slot,
    so a service that gave up restarting still shows why.
    """
    health = {}
    for container in local_containers:
        task_id = (container.get("Labels") or {}).get(TASK_LABEL)
        if task_id:
            health[task_id] = parse_status(str(container.get("Status", "")))[0]
    rows = []
    for svc in services:
        name = service_name(project, svc)
        image = str(svc["Spec"]["TaskTemplate"]["ContainerSpec"].get("Image", "")).split("@", 1)[0] or None
        replicated = svc["Spec"].get("Mode", {}).get("Replicated")
        slots = _by_slot([t for t in tasks if t.get("ServiceID") == svc["ID"]])
        chosen = [(t, group) for group in slots.values() for t in group if t.get("DesiredState") not in _GONE]
        if not chosen:
            if replicated is not None and not replicated.get("Replicas"):
                rows.append(ServiceStatus(service=name, state="stopped", image=image, desired_state="shutdown"))
                continue
            chosen = [(group[-1], group) for group in slots.values()]
        for task, group in chosen:
            rows.append(_row(svc, name, task, group, nodes, health, image))
    rows.sort(key=lambda r: (r.service, r.container or ""))
    return rows


def _row(
    svc: Mapping[str, Any],
    name: str,
    task: Mapping[str, Any],
    group: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, str | None],
    health: Mapping[str, str | None],
    image: str | None,
) -> ServiceStatus:
    status = task.get("Status") or {}
    state = str(status.get("State", "unknown"))
    error = status.get("Err")
    if not error and state != "running":
        failed = [t for t in group if t.get("Status", {}).get("Err")]
        error = failed[-1]["Status"]["Err"] if failed else None
    container_status = status.get("ContainerStatus") or {}
    exited = state in ("complete", "failed", "shutdown") and container_status.get("ContainerID")
    return ServiceStatus(
        service=name,
        # The name the task's container has (or will have) on its node.
        container=f"{svc['Spec']['Name']}.{_slot(task)}.{task['ID']}",
        state=state,
        health=health.get(str(task["ID"])),
        exit_code=container_status.get("ExitCode") if exited else None,
        ports=_ports(svc),
        image=image,
        started_at=status.get("Timestamp") if state == "running" else None,
        node=nodes.get(str(task.get("NodeID"))) if task.get("NodeID") else None,
        desired_state=task.get("DesiredState"),
        error=error,
    )


def task_labels(
    project: str,
    services: Sequence[Mapping[str, Any]],
    tasks: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, str | None],
) -> dict[str, str]:
    """The log label of each task: the service name, with ``.<slot>`` (or ``.<node>``) when it has several."""
    names = {svc["ID"]: service_name(project, svc) for svc in services}
    slots: dict[str, set[str]] = {}
    for task in tasks:
        slots.setdefault(task.get("ServiceID", ""), set()).add(_slot(task))
    labels = {}
    for task in tasks:
        service = names.get(task.get("ServiceID", ""))
        if service is None:
            continue
        if len(slots[task["ServiceID"]]) == 1:
            labels[str(task["ID"])] = service
        elif task.get("Slot"):
            labels[str(task["ID"])] = f"{service}.{task['Slot']}"
        else:
            labels[str(task["ID"])] = f"{service}.{nodes.get(str(task.get('NodeID'))) or task.get('NodeID')}"
    return labels


def split_service_log(service: str, data: bytes, labels: Mapping[str, str]) -> list[tuple[str, list[bytes]]]:
    """Service log lines (read with timestamps and details) as one (label, lines) stream per task.

    A line is ``<timestamp> com.docker.swarm.node.id=..,...,com.docker.swarm.task.id=.. <message>``;
    the details are removed. Each task's lines are in time order, which the merge relies on.
    """
    streams: dict[str, list[bytes]] = {}
    for line in split_log(data):
        stamp, _, rest = line.partition(b" ")
        task_id = ""
        if rest.startswith(b"com.docker.swarm."):
            details, _, rest = rest.partition(b" ")
            for pair in details.split(b","):
                key, _, value = pair.partition(b"=")
                if key == b"com.docker.swarm.task.id":
                    task_id = value.decode("ascii", "replace")
        streams.setdefault(task_id, []).append(stamp + b" " + rest)
    return [(labels.get(task_id, service), lines) for task_id, lines in streams.items()]


def node_rows(nodes: Sequence[Mapping[str, Any]], rows: Sequence[ServiceStatus]) -> list[SwarmNode]:
    """Every node of the swarm (``GET /nodes``), managers first, with how many of the stack's current tasks it runs.

    A task counts where Swarm still drives it to run (a task of a drained node that is shutting down
    no longer does).
    """
    counts: dict[str, int] = {}
    for row in rows:
        if row.node and row.desired_state not in (None, *_GONE):
            counts[row.node] = counts.get(row.node, 0) + 1
    found = []
    for node in nodes:
        hostname = str((node.get("Description") or {}).get("Hostname") or node["ID"])
        spec, status = node.get("Spec") or {}, node.get("Status") or {}
        found.append(
            SwarmNode(
                hostname=hostname,
                role=str(spec.get("Role", "worker")),
                availability=str(spec.get("Availability", "active")),
                state=str(status.get("State", "unknown")),
                leader=bool((node.get("ManagerStatus") or {}).get("Leader")),
                tasks=counts.get(hostname, 0),
            )
        )
    found.sort(key=lambda n: (n.role != "manager", n.hostname))
    return found
