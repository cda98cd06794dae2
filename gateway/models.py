"""The data the gateway returns: one pydantic model per result.

These models are the tools' output schemas, the status panel's JSON, and the operations API that
legacy mode calls in-process. Keep field names stable: clients depend on them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "ServiceStatus",
    "PsResult",
    "StackInfo",
    "StackList",
    "LogsResult",
    "ActionResult",
    "ConfigResult",
    "Action",
]

Action = Literal["up", "down", "restart", "start", "stop"]


class ServiceStatus(BaseModel):
    """One container of a service, or a defined service with no container (state ``missing``)."""

    service: str
    container: str | None = Field(default=None, description="Container name; null when the service has no container")
    state: str = Field(description="running, exited, created, restarting, paused, dead, or missing")
    health: str | None = Field(default=None, description="healthy, unhealthy or starting; null without a healthcheck")
    exit_code: int | None = Field(default=None, description="Exit code of an exited container")
    ports: list[str] = Field(default_factory=list, description="Published ports as host_ip:host_port->port/proto")
    image: str | None = None
    started_at: str | None = Field(default=None, description="RFC 3339 start time of a running container")


class PsResult(BaseModel):
    """The state of every service of one stack."""

    project: str
    services: list[ServiceStatus]


class StackInfo(BaseModel):
    """One stack: a folder under the stacks dir, or a running compose project without one."""

    name: str
    external: bool = Field(description="True when the project runs but has no folder; `up` and `config` need one")
    containers: int = Field(description="Containers that exist for this project")
    running: int = Field(description="Containers that are running")


class StackList(BaseModel):
    stacks: list[StackInfo]


class LogsResult(BaseModel):
    """Recent log lines, newest last, each prefixed with its service."""

    project: str
    text: str
    lines: int = Field(description="Lines returned")
    truncated: bool = Field(description="True when older lines were dropped to fit the byte cap")
    dropped_lines: int = Field(default=0, description="How many of the oldest matching lines were dropped")


class ActionResult(BaseModel):
    """The outcome of a lifecycle action."""

    project: str
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
