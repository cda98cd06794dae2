"""The data the gateway returns: one pydantic model per result.

These models are the tools' output schemas, the status panel's JSON, and the operations API that
legacy mode calls in-process. Keep field names stable: clients depend on them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "ServiceStatus",
    "SwarmNode",
    "PsResult",
    "StackInfo",
    "StackList",
    "HostStatus",
    "LogsResult",
    "ActionResult",
    "ConfigResult",
    "Action",
    "Violation",
    "Verdict",
    "PlanAction",
    "VolumeRisk",
    "DownRisk",
    "PlanResult",
    "ServiceChange",
    "DeployResult",
    "VersionInfo",
    "VersionList",
]

Action = Literal["up", "down", "restart", "start", "stop"]


class Violation(BaseModel):
    """One thing the policy guard refuses in a stack, and the operator's key that would allow it."""

    rule: str = Field(description="Stable rule id, e.g. privileged, host_bind, outside_files")
    service: str | None = Field(default=None, description="The service it concerns; null for a stack-level item")
    value: str = Field(description="The offending value, as Compose resolved it")
    allow: str = Field(description="The config.json key that would allow it (only the operator can)")

    def describe(self) -> str:
        """One line for people and agents: rule, where, what, and how the operator could allow it."""
        where = f"service '{self.service}'" if self.service else "the stack"
        return f"{self.rule}: {where}: {self.value} (the operator can allow it with {self.allow})"


class Verdict(BaseModel):
    """What the policy guard says about a stack: allowed, or refused with the rules it breaks."""

    allowed: bool
    rules: list[str] = Field(default_factory=list, description="The ids of the rules the stack breaks")
    violations: list[Violation] = Field(default_factory=list)
    error: str | None = Field(default=None, description="Why the guard could not judge the stack (then not allowed)")


class ServiceStatus(BaseModel):
    """One container of a service, or a defined service with no container (state ``missing``)."""

    service: str
    container: str | None = Field(default=None, description="Container name; null when the service has no container")
    state: str = Field(
        description="running, exited, created, restarting, paused, dead, or missing; for a swarm task its task "
        "state (pending, preparing, starting, running, complete, failed, rejected, shutdown, ...) or stopped"
    )
    health: str | None = Field(default=None, description="healthy, unhealthy or starting; null without a healthcheck")
    exit_code: int | None = Field(default=None, description="Exit code of an exited container")
    ports: list[str] = Field(default_factory=list, description="Published ports as host_ip:host_port->port/proto")
    image: str | None = None
    started_at: str | None = Field(default=None, description="RFC 3339 start time of a running container")
    # Swarm stacks only: one entry per task, and these say where it runs and what Swarm wants of it.
    node: str | None = Field(default=None, description="Swarm: the node the task runs on; null for Compose")
    desired_state: str | None = Field(
        default=None, description="Swarm: the state Swarm drives the task to (running, shutdown, ...); null for Compose"
    )
    error: str | None = Field(default=None, description="Swarm: why the task (or its slot's last task) failed")


class SwarmNode(BaseModel):
    """A node of the swarm a swarm stack runs on, as the manager sees it."""

    hostname: str
    role: str = Field(description="manager or worker")
    availability: str = Field(description="active, pause or drain: whether the scheduler places new tasks there")
    state: str = Field(description="ready, down, unknown or disconnected")
    leader: bool = Field(default=False, description="The manager that leads the swarm")
    tasks: int = Field(default=0, description="The stack's current tasks on this node")


class PsResult(BaseModel):
    """The state of every service of one stack."""

    project: str
    host: str = Field(default="local", description="The host (engine) it is on; local is the gateway's own")
    services: list[ServiceStatus]
    policy: Verdict | None = Field(
        default=None, description="The policy guard's verdict on the stack's compose files; null without a folder"
    )
    nodes: list[SwarmNode] | None = Field(
        default=None,
        description="Swarm: every node of the swarm, with how many of the stack's tasks it runs; null for Compose",
    )


class StackInfo(BaseModel):
    """One stack: a folder under the stacks dir, or a running compose project without one."""

    name: str
    host: str = Field(default="local", description="The host (engine) it is on; local is the gateway's own")
    external: bool = Field(description="True when the project runs but has no folder; `up` and `config` need one")
    containers: int = Field(description="Containers that exist for this project (for swarm: current tasks)")
    running: int = Field(description="Containers (for swarm: tasks) that are running")
    target: Literal["compose", "swarm"] = Field(
        default="compose", description="compose, or swarm for a stack deployed with `docker stack deploy`"
    )
    policy: Verdict | None = Field(
        default=None,
        description="The policy guard's verdict: `up` refuses a stack that is not allowed. Null for an external "
        "stack, or when it was not judged yet (a first listing of many stacks; ask again)",
    )


class HostStatus(BaseModel):
    """One host of the listing: whether its engine answered, and why not."""

    name: str
    state: Literal["up", "degraded", "timeout"] = Field(
        description="up: listed; degraded: its engine failed (calls to it fail fast until it answers again); "
        "timeout: it did not answer within the listing's budget"
    )
    error: str | None = Field(default=None, description="Why its stacks are missing from this listing")
    read_only: bool = Field(default=False, description="Writes on this host are refused")


class StackList(BaseModel):
    stacks: list[StackInfo]
    hosts: list[HostStatus] = Field(
        default_factory=list, description="Every host listed, with its state; a host that failed is here, not fatal"
    )


class LogsResult(BaseModel):
    """Recent log lines, newest last, each prefixed with its service."""

    project: str
    host: str = Field(default="local", description="The host (engine) it is on; local is the gateway's own")
    text: str
    lines: int = Field(description="Lines returned")
    truncated: bool = Field(description="True when older lines were dropped to fit the byte cap")
    dropped_lines: int = Field(default=0, description="How many of the oldest matching lines were dropped")


class ActionResult(BaseModel):
    """The outcome of a lifecycle action."""

    project: str
    host: str = Field(default="local", description="The host (engine) it is on; local is the gateway's own")
    action: str
    ok: bool
    services: list[str] | None = None
    duration_ms: float
    events: list[str] = Field(default_factory=list, description="Compose progress events, one per line")
    message: str = ""


class ConfigResult(BaseModel):
    """The stack's compose model, validated and normalised by Compose itself."""

    project: str
    config: dict[str, object]


PlanKind = Literal["create", "recreate", "start", "remove", "unchanged"]


class PlanAction(BaseModel):
    """What ``up`` would do to one service."""

    service: str
    action: PlanKind = Field(description="create, recreate, start, remove or unchanged")
    reason: str


class VolumeRisk(BaseModel):
    """A volume of the stack, and whether ``down`` can delete it."""

    name: str
    kind: Literal["named", "anonymous"]
    services: list[str] = Field(default_factory=list)
    removed_by_down_volumes: bool = Field(description="True when down with volumes=true deletes it and its data")


class DownRisk(BaseModel):
    """What ``down`` would remove, and the data that goes with it."""

    containers: list[str] = Field(description="Containers down removes; files written inside them are lost")
    volumes: list[VolumeRisk] = Field(description="Kept by down, deleted by down with volumes=true unless external")


class PlanResult(BaseModel):
    """What ``up`` would do now, or after deploying a given compose file. Nothing is changed to find out."""

    project: str
    version: int | None = Field(default=None, description="The stack's current version, if it was ever deployed")
    actions: list[PlanAction]
    policy: Verdict = Field(description="The policy guard's verdict on the compose file the plan is about")
    down: DownRisk
    warnings: list[str] = Field(default_factory=list)


class ServiceChange(BaseModel):
    """How one service's definition differs between the old compose file and the new one."""

    service: str
    change: Literal["added", "removed", "changed", "unchanged"]


class DeployResult(BaseModel):
    """The outcome of a deploy or a rollback."""

    project: str
    host: str = Field(default="local", description="The host (engine) it is on; local is the gateway's own")
    action: Literal["deploy", "rollback"]
    version: int = Field(description="The version now on disk and running")
    previous_version: int | None = Field(default=None, description="The version that was on disk before")
    sha256: str = Field(description="SHA-256 of the compose file now on disk")
    created: bool = Field(description="True when this call created the stack folder")
    changes: list[ServiceChange] = Field(description="Service definitions added, removed or changed by this call")
    env_names: list[str] | None = Field(default=None, description="Variables written to .env (values never shown)")
    duration_ms: float
    events: list[str] = Field(default_factory=list, description="Compose progress events of the up, one per line")
    message: str = ""


class VersionInfo(BaseModel):
    """One kept version of a stack's compose file (its content is never served)."""

    version: int
    created: str = Field(description="RFC 3339 time it was recorded")
    sha256: str = Field(description="SHA-256 of its compose file")
    source: str = Field(description="deploy, or disk: the file found on disk before a deploy or rollback replaced it")
    caller: str
    current: bool


class VersionList(BaseModel):
    """The kept versions of a stack, oldest first."""

    project: str
    current: int | None
    versions: list[VersionInfo]
