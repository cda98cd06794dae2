"""Finding the Compose CLI processes a test started, by reading ``/proc``.

A test that cancels or signals a Compose run checks here that no process of its project is left.
The gateway names the project on every Compose command line (``--project-name NAME``), so the
project's random name finds exactly this test's processes on a shared machine.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["argv", "compose_pids", "compose_up_pids"]


def argv(pid: int) -> list[bytes]:
    """The command line of ``pid``, or ``[]`` once it has gone (or cannot be read)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def compose_pids(project: str) -> list[int]:
    """PIDs of the running Compose CLI processes whose command line names ``project`` as the project."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        args = argv(int(entry.name))
        if b"--project-name" in args and project.encode() in args:
            found.append(int(entry.name))
    return found


def compose_up_pids(project: str) -> list[int]:
    """Processes of ``docker compose up`` for ``project``: the command itself, not the guard's ``config``."""
    return [pid for pid in compose_pids(project) if b"up" in argv(pid)]
