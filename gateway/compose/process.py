"""How a CLI child of the gateway runs: the one place that starts ``docker compose`` and ``docker stack``.

Every child:

- runs in a **session of its own**, so that stopping it reaches what it started (a build, a
  credential helper) through its process group, and a signal to the gateway's group does not;
- gets the **environment it is handed** (the allowlist of :func:`~gateway.compose.cli.compose_environment`)
  plus :data:`PARENT_ENV`, which names the gateway that started it;
- runs under a **budget**: its data segment (``RLIMIT_DATA``, the heap of a Go program such as
  Compose) and its CPU time (``RLIMIT_CPU``) are capped, and it writes no core file (``RLIMIT_CORE``
  0: a core of Compose would hold the stack's secrets). The caller bounds its wall-clock time;
- **dies with the gateway**: a small keeper process (see :mod:`gateway.compose.keeper`) ends the
  process groups of the children a dead gateway leaves, and :func:`find_orphans` finds, at the next
  start, any that outlived both.

Why not ``preexec_fn`` (``prctl(PR_SET_PDEATHSIG)`` and ``setrlimit`` in the child before exec): it
forks instead of vforking and runs Python in the child of a threaded process, which CPython warns
may deadlock; it cost 7 ms a start here. An exec wrapper (``prlimit``, ``setpriv``) is safe but adds
an exec, 2 to 3 ms a start, and ``PR_SET_PDEATHSIG`` would still end only the direct child, and only
when the *thread* that forked it ends. So the budget is set with ``prlimit(2)`` on the child the
moment it is started (0.1 ms; Compose's Go runtime has not finished starting by then, let alone read
a file), and the keeper ends whole process groups at no cost per start.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import anyio
from anyio.abc import Process

from .keeper import keeper, process_start_time

__all__ = [
    "Budget",
    "DEFAULT_BUDGET",
    "PARENT_ENV",
    "Orphan",
    "apply_budget",
    "budget_exceeded",
    "find_orphans",
    "open_child",
    "parent_marker",
    "stop_child",
    "stop_orphans",
]

logger = logging.getLogger(__name__)

# "<pid>:<start time>" of the gateway that started the child: a restart finds what a dead one left.
PARENT_ENV = "COMPOSE_AGENT_PARENT"
# How long a child has to end on SIGTERM before its group gets SIGKILL.
STOP_GRACE_S = 5.0
MIB = 1024 * 1024
# What Go's runtime says when an allocation fails (which one depends on where it failed).
_OUT_OF_MEMORY = ("out of memory", "cannot allocate memory")
# The kernel's SIGKILL comes this much later than the SIGXCPU at the soft CPU limit.
_CPU_HARD_MARGIN_S = 5


@dataclass(frozen=True)
class Budget:
    """What one CLI child may use: ``memory_mb`` of data segment and ``cpu_seconds`` of CPU time.

    None lifts a limit. The defaults hold a normal ``up`` with builds many times over (Compose
    itself stays under 100 MiB and a few seconds of CPU; images build in the engine, not in it),
    and stop a runaway (a YAML alias bomb drove Compose to 7.5 GB) long before it hurts the host.
    """

    memory_mb: int | None = 2048
    cpu_seconds: int | None = 300

    def describe(self) -> str:
        memory = "no memory limit" if self.memory_mb is None else f"{self.memory_mb} MiB of memory"
        cpu = "no CPU limit" if self.cpu_seconds is None else f"{self.cpu_seconds} s of CPU"
        return f"{memory} and {cpu}"


DEFAULT_BUDGET = Budget()


@cache
def parent_marker() -> str:
    """The value of :data:`PARENT_ENV` for children of this process."""
    pid = os.getpid()
    return f"{pid}:{process_start_time(pid)}"


def apply_budget(pid: int, budget: Budget) -> None:
    """Cap the running child ``pid`` at ``budget`` (soft and hard: it cannot raise them again).

    A child that is already gone is left alone; a limit the system refuses is logged, not fatal.
    """
    limits: list[tuple[int, tuple[int, int]]] = [(resource.RLIMIT_CORE, (0, 0))]
    if budget.memory_mb is not None:
        size = budget.memory_mb * MIB
        limits.append((resource.RLIMIT_DATA, (size, size)))
    if budget.cpu_seconds is not None:
        limits.append((resource.RLIMIT_CPU, (budget.cpu_seconds, budget.cpu_seconds + _CPU_HARD_MARGIN_S)))
    for which, value in limits:
        try:
            resource.prlimit(pid, which, value)
        except ProcessLookupError:
            return
        except (OSError, ValueError) as exc:
            logger.warning("cannot limit the CLI child %d (%s): %s", pid, which, exc)


async def open_child(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    budget: Budget = DEFAULT_BUDGET,
    cwd: Path | None = None,
    stdin: int = subprocess.DEVNULL,
    stderr: int = subprocess.PIPE,
) -> Process:
    """Start ``argv`` as a child in its own session, with ``env`` (and the parent marker), under ``budget``.

    Stdout is a pipe; ``stdin`` and ``stderr`` are ``subprocess`` constants. Hand the process to
    :func:`stop_child` when done with it, whatever happened (a ``finally``).

    Raises:
        OSError: the program cannot be started (the caller translates it).
    """
    process = await anyio.open_process(
        list(argv),
        cwd=str(cwd) if cwd is not None else None,
        env={**env, PARENT_ENV: parent_marker()},
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=stderr,
        start_new_session=True,
    )
    apply_budget(process.pid, budget)
    keeper().watch(process.pid)
    return process


async def stop_child(process: Process) -> None:
    """Make sure the child and its process group are gone, also when the caller was cancelled mid-run.

    The child leads its own session, so its group id is its pid: SIGTERM to the group, up to
    :data:`STOP_GRACE_S` for the child to end, then SIGKILL.
    """
    try:
        if process.returncode is None:
            with anyio.CancelScope(shield=True):
                _signal_group(process, signal.SIGTERM)
                with anyio.move_on_after(STOP_GRACE_S):
                    await process.wait()
                if process.returncode is None:
                    _signal_group(process, signal.SIGKILL)
                await process.aclose()
        else:
            await process.aclose()
    finally:
        keeper().forget(process.pid)


def budget_exceeded(returncode: int | None, stderr: str, budget: Budget) -> str | None:
    """What to add to a failure that looks like the child ran out of its budget, or None."""
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL) and budget.cpu_seconds is not None:
        return f"it may have used up its CPU budget of {budget.cpu_seconds} s (COMPOSE_AGENT_COMPOSE_CPU_SECONDS)"
    if budget.memory_mb is not None and any(sign in stderr for sign in _OUT_OF_MEMORY):
        return (
            f"it ran out of its memory budget of {budget.memory_mb} MiB (COMPOSE_AGENT_COMPOSE_MEMORY_MB); "
            "a compose file that needs more than this is likely a YAML alias bomb"
        )
    return None


def _signal_group(process: Process, signum: signal.Signals) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass  # already gone
    except PermissionError:
        process.send_signal(signum)


# -- what a dead gateway left -------------------------------------------------------------------


@dataclass(frozen=True)
class Orphan:
    """A CLI child whose gateway is gone: its pid, the gateway's pid, and its command line."""

    pid: int
    parent: int
    command: str


def find_orphans(proc: Path = Path("/proc")) -> list[Orphan]:
    """Processes started by a gateway that is no longer running (read from each one's environment).

    Only processes of this user can be read, which are the only ones a gateway of this user starts.
    A gateway that is alive (the same pid *and* start time) still owns its children.
    """
    found: list[Orphan] = []
    wanted = PARENT_ENV.encode() + b"="
    uid = os.getuid()
    for entry in _pids(proc):
        try:
            # Another user's process is not read at all: reading an environment waits on that
            # process's memory map, and a gateway's children are its own user's anyway.
            if (proc / str(entry)).stat().st_uid != uid:
                continue
            environ = (proc / str(entry) / "environ").read_bytes()
        except OSError:
            continue  # gone
        for item in environ.split(b"\0"):
            if item.startswith(wanted):
                parent = _dead_parent(item[len(wanted) :].decode("ascii", "replace"), proc)
                if parent is not None:
                    found.append(Orphan(entry, parent, _command(proc, entry)))
                break
    return found


def stop_orphans(orphans: Sequence[Orphan]) -> None:
    """Send the process groups of ``orphans`` SIGTERM now, and SIGKILL those still there after the grace."""
    groups: set[int] = set()
    for orphan in orphans:
        try:
            groups.add(os.getpgid(orphan.pid))
        except ProcessLookupError:
            continue
    for group in groups:
        _kill_group(group, signal.SIGTERM)

    def finish() -> None:
        for group in groups:
            _kill_group(group, signal.SIGKILL)

    if groups:
        # Off the start-up path: the grace passes while the gateway starts.
        timer = threading.Timer(STOP_GRACE_S, finish)
        timer.daemon = True
        timer.start()


def _kill_group(group: int, signum: signal.Signals) -> None:
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _pids(proc: Path) -> list[int]:
    try:
        return [int(entry.name) for entry in proc.iterdir() if entry.name.isdigit()]
    except OSError:
        return []


def _dead_parent(marker: str, proc: Path) -> int | None:
    """The pid in ``marker`` if that process is gone (or is another process now), else None."""
    pid_text, _, start = marker.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return None
    alive = process_start_time(pid, proc)
    return None if alive is not None and str(alive) == start else pid


def _command(proc: Path, pid: int) -> str:
    try:
        args = (proc / str(pid) / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return "?"
    return " ".join(arg.decode("utf-8", "replace") for arg in args)[:300]
