"""Health classification: a pure function from ``docker inspect`` (and recent logs) to a state.

Nothing here talks to Docker, so every rule is unit-tested with plain dicts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = ["GLIBC_PATTERN", "Health", "State", "advice", "classify"]

#: The dynamic loader's message when a binary needs a newer glibc than the image provides.
GLIBC_PATTERN = re.compile(r"version [`'\u2018]GLIBC_([0-9][0-9.]*)[`'\u2019] not found")

_MAX_PROBE_OUTPUT = 200


class State(StrEnum):
    """The watchdog's view of its target. ``Unknown`` only until the first inspect answers."""

    UNKNOWN = "Unknown"
    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"
    GLIBC_MISMATCH = "GlibcMismatch"
    NOT_FOUND = "NotFound"
    GAVE_UP = "GaveUp"


@dataclass(frozen=True)
class Health:
    """One observation of the target.

    ``engine_restarting`` means dockerd itself is restarting the target (a restart policy in
    progress): the watchdog must not fight it. ``restart_count`` is dockerd's own RestartCount.
    """

    state: State
    reason: str = ""
    engine_restarting: bool = False
    restart_count: int = 0

    @property
    def failing(self) -> bool:
        """True for the states that call for a repair."""
        return self.state in (State.UNHEALTHY, State.GLIBC_MISMATCH)


def _probe_output(health: dict[str, Any]) -> str:
    log = health.get("Log") or []
    if not log:
        return "no probe output"
    last = log[-1]
    output = " ".join(str(last.get("Output", "")).split())[:_MAX_PROBE_OUTPUT]
    return f"last probe exit code {last.get('ExitCode')}: {output or '(no output)'}"


def classify(attrs: dict[str, Any] | None, logs: str = "") -> Health:
    """Classify one ``docker inspect`` result; ``None`` means there is no such container.

    ``logs`` are the target's recent log lines, searched for a diagnosis (GLIBC) when it is failing.
    """
    if attrs is None:
        return Health(State.NOT_FOUND, "no such container")
    state: dict[str, Any] = attrs.get("State") or {}
    restart_count = int(attrs.get("RestartCount") or 0)
    status = str(state.get("Status", ""))
    health: dict[str, Any] = state.get("Health") or {}

    engine_restarting = False
    if state.get("Restarting") or status == "restarting":
        policy = ((attrs.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name") or "none"
        reason = f"being restarted by dockerd (restart policy {policy}, RestartCount={restart_count})"
        engine_restarting = True
    elif state.get("Paused"):
        reason = "paused"
    elif state.get("Running"):
        health_status = health.get("Status", "")
        if health_status != "unhealthy":
            reason = "healthcheck starting" if health_status == "starting" else ""
            return Health(State.HEALTHY, reason, restart_count=restart_count)
        reason = f"healthcheck failing ({_probe_output(health)})"
    elif state.get("OOMKilled"):
        reason = f"OOM-killed (exit code {state.get('ExitCode')})"
    elif status == "created":
        reason = "created but never started"
    elif status == "dead":
        reason = "dead (the engine could not stop or remove it cleanly)"
    else:
        error = state.get("Error")
        reason = f"exited with code {state.get('ExitCode')}" + (f" ({error})" if error else "")

    match = GLIBC_PATTERN.search(logs)
    if match:
        line = next((ln for ln in logs.splitlines() if GLIBC_PATTERN.search(ln)), match.group(0))
        return Health(
            State.GLIBC_MISMATCH,
            f"{reason}; the image needs GLIBC_{match.group(1)}: {line.strip()[:_MAX_PROBE_OUTPUT]}",
            engine_restarting=engine_restarting,
            restart_count=restart_count,
        )
    return Health(State.UNHEALTHY, reason, engine_restarting=engine_restarting, restart_count=restart_count)


def advice(state: State, reason: str) -> str:
    """What an operator should do about a target the watchdog gave up on."""
    if state is State.GLIBC_MISMATCH:
        return (
            "the image's binaries were built against a newer glibc than its base image ships: rebuild on a "
            "compatible base image (the same or a newer glibc than the build), or use a static/musl build"
        )
    if "OOM" in reason:
        return "raise the container's memory limit or find what uses the memory"
    if reason.startswith("healthcheck"):
        return "check the service with `docker logs` and fix what its healthcheck probes"
    return "read `docker logs` of the target, fix the cause, then start it; the watchdog keeps observing"
