"""What the pages show: the gateway's results turned into what the templates render."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.api import PsResult, ServiceStatus, StackInfo, Verdict, VersionList

__all__ = ["humanize_uptime", "stack_card", "version_rows"]

# Swarm task states that are on their way to running rather than failed.
_SWARM_PENDING = frozenset({"new", "pending", "assigned", "accepted", "preparing", "ready", "starting"})


def humanize_uptime(started_at: str | None, now: datetime | None = None) -> str:
    """``2026-11-26T21:00:00.123456789Z`` -> ``3h 12m``; empty when unknown."""
    if not started_at or started_at.startswith("0001-"):
        return ""
    try:
        started = datetime.fromisoformat(started_at)  # Python 3.11 reads the engine's nanoseconds
    except ValueError:
        return ""
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    seconds = int(((now or datetime.now(UTC)) - started).total_seconds())
    if seconds < 0:
        return "just now"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _row(svc: ServiceStatus) -> dict[str, Any]:
    return {
        "service": svc.service,
        "container": svc.container,
        "state": svc.state,
        "health": svc.health,
        "exit_code": svc.exit_code,
        "ports": svc.ports,
        "image": svc.image,
        "uptime": humanize_uptime(svc.started_at) if svc.state == "running" else "",
        "node": svc.node,
        "desired_state": svc.desired_state,
        "error": svc.error,
    }


def _swarm_groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per swarm service: its replicas (tasks) with their nodes, and how many run."""
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        group = groups.setdefault(
            row["service"], {"service": row["service"], "image": row["image"], "ports": row["ports"], "tasks": []}
        )
        # A service scaled to zero is one row with no task: it has no replica to show.
        if row["container"] is not None:
            group["tasks"].append(row)
    for group in groups.values():
        tasks = group["tasks"]
        group["running"] = sum(1 for t in tasks if t["state"] == "running")
        group["replicas"] = sum(1 for t in tasks if t["desired_state"] == "running")
        if group["replicas"] == 0:
            group["summary"], group["tone"] = "stopped", "muted"
        elif group["running"] == group["replicas"]:
            group["summary"], group["tone"] = f"{group['running']}/{group['replicas']} running", "ok"
        elif any(t["state"] in _SWARM_PENDING for t in tasks):
            group["summary"], group["tone"] = f"{group['running']}/{group['replicas']} running", "warn"
        else:
            group["summary"], group["tone"] = f"{group['running']}/{group['replicas']} running", "bad"
    return list(groups.values())


def _swarm_nodes(ps: PsResult | None) -> list[dict[str, Any]]:
    """Every node of the swarm, managers first, with the stack's tasks there and whether it takes new ones."""
    if ps is None or not ps.nodes:
        return []
    return [
        {
            "hostname": n.hostname,
            "role": "leader" if n.leader else n.role,
            "availability": n.availability,
            "state": n.state,
            "tasks": n.tasks,
            # A drained or paused node takes no new task; a node that is not ready runs none.
            "tone": "bad" if n.state != "ready" else "warn" if n.availability != "active" else "ok",
        }
        for n in ps.nodes
    ]


def _policy(verdict: Verdict | None) -> dict[str, Any] | None:
    """The guard's verdict, shown only when ``up`` would be refused."""
    if verdict is None or verdict.allowed:
        return None
    label = f"refused: {', '.join(verdict.rules)}" if verdict.rules else "cannot be judged"
    details = [v.describe() for v in verdict.violations] or ([verdict.error] if verdict.error else [])
    return {"label": label, "rules": verdict.rules, "details": details}


def stack_card(info: StackInfo, ps: PsResult | None, error: str | None) -> dict[str, Any]:
    """A stack as a card: its services (Compose) or services with their replicas (Swarm), and its state."""
    rows = [_row(svc) for svc in ps.services] if ps else []
    swarm = info.target == "swarm"
    if swarm:
        running = sum(1 for r in rows if r["state"] == "running")
        total = sum(1 for r in rows if r["desired_state"] == "running")
    else:
        running = sum(1 for r in rows if r["state"] == "running")
        total = len(rows)
    if ps is None:
        overall, running, total = "unknown", info.running, info.containers
    elif total and running == total:
        overall = "running"
    elif running:
        overall = "partial"
    else:
        overall = "stopped"
    return {
        "name": info.name,
        # Another host's stack is shown in its host's group, read-only here.
        "host": info.host,
        "remote": info.host != "local",
        "external": info.external,
        "target": info.target,
        "swarm": swarm,
        # The policy guard's verdict: a badge and the reasons when `up` would be refused.
        "policy": _policy(ps.policy if ps is not None and ps.policy is not None else info.policy),
        "services": rows,
        "groups": _swarm_groups(rows) if swarm else [],
        "nodes": sorted({r["node"] for r in rows if r["node"]}),
        "swarm_nodes": _swarm_nodes(ps) if swarm else [],
        "running": running,
        "total": total,
        "overall": overall,
        "error": error,
    }


def version_rows(listing: VersionList) -> list[dict[str, Any]]:
    """The kept versions, newest first, as the stack page lists them."""
    rows = []
    for v in reversed(listing.versions):
        rows.append(
            {
                "version": v.version,
                "created": v.created.replace("T", " ")[:19] + " UTC",
                "source": v.source,
                "caller": v.caller,
                "sha": v.sha256[:12],
                "current": v.current,
            }
        )
    return rows
