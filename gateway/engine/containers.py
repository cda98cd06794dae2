"""What the Engine's container list says about Compose containers, as the gateway shows it.

The labels Compose puts on its containers, and the reading of one list entry: its service, state,
health and exit code (from the human ``Status`` string, which saves an inspect per container), and
how long it can have been up, which tells whether a remembered start time is still right.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from ..models import ServiceStatus

__all__ = [
    "NUMBER_LABEL",
    "ONEOFF_LABEL",
    "PROJECT_LABEL",
    "SERVICE_LABEL",
    "container_to_status",
    "parse_status",
    "parse_time",
    "uptime_upper_bound",
]

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
ONEOFF_LABEL = "com.docker.compose.oneoff"

_HEALTH_RE = re.compile(r"\((healthy|unhealthy|health: starting)\)")
_EXIT_RE = re.compile(r"^Exited \((-?\d+)\)")
# "Up 5 seconds", "Up About a minute", "Up Less than a second (healthy)", "Up 3 hours (Paused)"
_UP_RE = re.compile(
    r"^Up (Less than a second|About an? (minute|hour)|(\d+) (second|minute|hour|day|week|month|year)s?)"
)
_UNIT_SECONDS = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 604800,
    "month": 2678400,
    "year": 31622400,
}


def parse_status(status: str) -> tuple[str | None, int | None]:
    """Health and exit code from the list endpoint's human ``Status`` string, which saves an inspect."""
    health_match = _HEALTH_RE.search(status)
    health = None
    if health_match:
        health = "starting" if health_match.group(1) == "health: starting" else health_match.group(1)
    exit_match = _EXIT_RE.match(status)
    return health, int(exit_match.group(1)) if exit_match else None


def uptime_upper_bound(status: str) -> float | None:
    """The longest uptime a ``Status`` of "Up ..." can stand for, in seconds; None if not running."""
    match = _UP_RE.match(status)
    if not match:
        return None
    if match.group(1) == "Less than a second":
        return 1.0
    if match.group(2):
        return 2.0 * _UNIT_SECONDS[match.group(2)]
    return (int(match.group(3)) + 1) * _UNIT_SECONDS[match.group(4)]


def _format_ports(ports: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for port in ports:
        private, proto = port.get("PrivatePort"), port.get("Type", "tcp")
        public = port.get("PublicPort")
        if public:
            ip = port.get("IP") or "0.0.0.0"
            # The engine lists a port once per address family; one line per binding is enough.
            ip = "0.0.0.0" if ip == "::" else ip
            text = f"{ip}:{public}->{private}/{proto}"
        else:
            text = f"{private}/{proto}"
        if text not in seen:
            seen.append(text)
    return seen


def container_to_status(container: dict[str, Any], started_at: str | None = None) -> ServiceStatus:
    """One entry of the Engine's container list as a :class:`ServiceStatus`."""
    labels = container.get("Labels") or {}
    status = container.get("Status", "")
    health, exit_code = parse_status(status)
    names = container.get("Names") or [""]
    state = container.get("State", "unknown")
    return ServiceStatus(
        service=labels.get(SERVICE_LABEL, "?"),
        container=names[0].lstrip("/") or container.get("Id", "")[:12],
        state=state,
        health=health,
        exit_code=exit_code if state in ("exited", "dead") else None,
        ports=_format_ports(container.get("Ports") or []),
        image=container.get("Image"),
        started_at=started_at,
    )


def parse_time(raw: str) -> float:
    """The engine's RFC 3339 time (``StartedAt``) as a Unix timestamp; 0.0 when it is not one."""
    # The engine writes nanoseconds; Python 3.11's fromisoformat reads them, keeping microseconds.
    try:
        return datetime.fromisoformat(raw).timestamp()
    except ValueError:
        return 0.0
