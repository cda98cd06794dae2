"""Engines whose test process died before removing them (SIGKILL, a CI timeout), found and removed.

Every engine container and volume carries labels naming the process that made it: this machine's
name and boot, its PID and that PID's start time (so a reused PID is not mistaken for the owner).
:func:`sweep` removes the engines of owners that no longer run here, with their files, and ssh
config files whose engine has gone. Engines of live runs, and anything made on another machine
sharing the engine, are never touched.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

from tests.engines.errors import run
from tests.engines.ssh import CONFIG_PREFIX, SSH_CONFIG_DIR

__all__ = ["ENGINE_LABEL", "OWNER_LABEL", "owner_labels", "sweep"]

logger = logging.getLogger(__name__)

ENGINE_LABEL = "compose-agent.test-engine"
OWNER_LABEL = "compose-agent.test-engine.owner"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def _owner(pid: int) -> str:
    return f"{socket.gethostname()}/{_boot_id()}/{pid}/{_start_time(pid)}"


def owner_labels() -> dict[str, str]:
    """The labels that name this process as the owner of what it makes."""
    return {OWNER_LABEL: _owner(os.getpid())}


def _owner_is_gone(owner: str) -> bool:
    host, boot, pid, started = (owner.split("/") + ["", "", "", ""])[:4]
    if host != socket.gethostname() or boot != _boot_id() or not pid.isdigit():
        # Made on another machine that shares this engine, or before a reboot: not ours to judge.
        return False
    return _start_time(int(pid)) != started


def _labelled(kind: str) -> list[dict[str, str]]:
    """``[{name, owner}]`` of every container (``kind="ps"``), ``"volume"`` or ``"network"`` with the engine label."""
    name = "{{.Names}}" if kind == "ps" else "{{.Name}}"
    command = ["docker", "ps", "-a"] if kind == "ps" else ["docker", kind, "ls"]
    template = name + '\t{{.Label "' + OWNER_LABEL + '"}}'
    found = run([*command, "--filter", f"label={ENGINE_LABEL}", "--format", template], check=False)
    rows = (line.split("\t") for line in found.stdout.splitlines() if "\t" in line)
    return [{"name": row[0], "owner": row[1]} for row in rows]


def sweep() -> list[str]:
    """Remove the engines of test processes that died; return their names.

    Never raises for a single leftover: what cannot be removed now is logged and tried again next time.
    """
    removed: list[str] = []
    for container in _labelled("ps"):
        if _owner_is_gone(container["owner"]):
            name = container["name"]
            run(["docker", "rm", "-f", "-v", name], check=False)
            shutil.rmtree(Path(tempfile.gettempdir()) / name, ignore_errors=True)
            (SSH_CONFIG_DIR / f"{CONFIG_PREFIX}{name}.conf").unlink(missing_ok=True)
            removed.append(name)
    for kind in ("volume", "network"):
        # A volume made just before its owner died, with no container yet, is swept here too.
        for leftover in _labelled(kind):
            if _owner_is_gone(leftover["owner"]):
                run(["docker", kind, "rm", leftover["name"]], check=False)
    # Listed before the containers: an engine writes its file after its container exists.
    configs = list(SSH_CONFIG_DIR.glob(f"{CONFIG_PREFIX}*.conf"))
    live = {c["name"] for c in _labelled("ps")}
    for config in configs:
        name = config.name.removeprefix(CONFIG_PREFIX).removesuffix(".conf")
        # Its container is gone: a stale Host block for a reused address would shadow a new engine's.
        if name not in live:
            config.unlink(missing_ok=True)
            shutil.rmtree(Path(tempfile.gettempdir()) / name, ignore_errors=True)
    if removed:
        logger.info("removed the engines of test runs that died: %s", ", ".join(removed))
    return removed
