"""Counts of executed commands, tagged by the control plane that ran them."""

from __future__ import annotations

import enum
import threading
import time
from collections import Counter
from typing import Any

__all__ = ["ControlPlane", "CommandExecutionMetrics"]


class ControlPlane(enum.StrEnum):
    """Who executed a command: the gateway itself, or the status panel in legacy mode."""

    STATUS_PANEL = "status_panel"
    COMPOSE_AGENT = "compose_agent"


class CommandExecutionMetrics:
    """Thread-safe counters for every operation that reached Docker.

    Tools may run in worker threads, so every update holds a lock; a snapshot is a consistent copy.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_plane: Counter[ControlPlane] = Counter()
        self._by_tool: Counter[str] = Counter()
        self._success = 0
        self._failure = 0
        self._last_plane: ControlPlane | None = None
        self._last_ms: int | None = None

    def record_execution(self, plane: ControlPlane, tool: str, *, ok: bool = True) -> None:
        """Count one executed command."""
        now_ms = int(time.time() * 1000)
        with self._lock:
            self._by_plane[plane] += 1
            self._by_tool[tool] += 1
            if ok:
                self._success += 1
            else:
                self._failure += 1
            self._last_plane = plane
            self._last_ms = now_ms

    def snapshot(self) -> dict[str, Any]:
        """The JSON document served at ``/api/v1/metrics``."""
        with self._lock:
            return {
                "status_panel_count": self._by_plane[ControlPlane.STATUS_PANEL],
                "compose_agent_count": self._by_plane[ControlPlane.COMPOSE_AGENT],
                "total_count": sum(self._by_plane.values()),
                "success_count": self._success,
                "failure_count": self._failure,
                "last_control_plane": self._last_plane.value if self._last_plane else None,
                "last_command_timestamp_ms": self._last_ms,
                "by_tool": dict(self._by_tool),
            }

    def prometheus(self) -> str:
        """The same numbers in the Prometheus text exposition format."""
        snap = self.snapshot()
        lines = [
            "# HELP compose_agent_commands_total Commands executed, by control plane.",
            "# TYPE compose_agent_commands_total counter",
        ]
        for plane in ControlPlane:
            lines.append(
                f'compose_agent_commands_total{{control_plane="{plane.value}"}} {snap[plane.value + "_count"]}'
            )
        lines += [
            "# HELP compose_agent_command_outcomes_total Commands executed, by outcome.",
            "# TYPE compose_agent_command_outcomes_total counter",
            f'compose_agent_command_outcomes_total{{outcome="success"}} {snap["success_count"]}',
            f'compose_agent_command_outcomes_total{{outcome="failure"}} {snap["failure_count"]}',
            "# HELP compose_agent_tool_calls_total Commands executed, by tool.",
            "# TYPE compose_agent_tool_calls_total counter",
        ]
        for tool, count in sorted(snap["by_tool"].items()):
            lines.append(f'compose_agent_tool_calls_total{{tool="{tool}"}} {count}')
        last = snap["last_command_timestamp_ms"]
        lines += [
            "# HELP compose_agent_last_command_timestamp_seconds When the last command ran.",
            "# TYPE compose_agent_last_command_timestamp_seconds gauge",
            f"compose_agent_last_command_timestamp_seconds {last / 1000 if last else 0}",
        ]
        return "\n".join(lines) + "\n"
