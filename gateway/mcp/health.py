"""What ``/health`` says, and the background tasks that must never take the server down.

``/health`` answers 503, with the reasons, whenever an MCP client would be failed, so that the
container's HEALTHCHECK fails and the watchdog restarts a gateway that cannot serve:

- the MCP session manager is not running (the task group that serves every session is gone);
- the process is out of file descriptors, or within :data:`DESCRIPTOR_FLOOR` of its limit;
- the Docker engine has not answered for longer than ``engine_down_timeout``.

It answers 200 otherwise: ``ok``, or ``degraded`` with the reasons (the engine down for less than
the bound, a background task failing and being retried, the audit's disk under its reserve), which
a restart would not mend. It stays cheap under a flood of probes: the engine is pinged and the
descriptors counted at most once per :data:`PROBE_TTL_S`, by one caller at a time.

:func:`supervise` runs a background task (the stack watcher, the notifier, the token refresh) so
that nothing it raises reaches the server's task group: a failure is logged, counted here, and the
task is started again after a backoff.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from .. import __version__
from ..audit import AuditLog
from ..backoff import Backoff

__all__ = ["Vitals", "Report", "supervise", "DESCRIPTOR_FLOOR", "PROBE_TTL_S"]

logger = logging.getLogger(__name__)

BackgroundTask = Callable[[], Coroutine[Any, Any, None]]

# Fewer free descriptors than this and a new connection, a Compose run or an engine call may fail.
DESCRIPTOR_FLOOR = 16
# The engine's answer and the descriptor count are reused for this long.
PROBE_TTL_S = 2.0
# How long one engine ping may take before the engine counts as not answering.
PING_TIMEOUT_S = 3.0
# A task that ran this long before it failed starts again from the shortest backoff.
_STABLE_RUN_S = 60.0
_FD_DIR = Path("/proc/self/fd")


@dataclass
class _TaskState:
    failures: int = 0
    last_error: str = ""
    last_failed: float = 0.0


@dataclass(frozen=True)
class Report:
    """One answer of ``/health``: its status code and JSON body."""

    status_code: int
    body: dict[str, Any]


@dataclass
class _Probe:
    at: float = -1e9
    engine_up: bool = True
    descriptors: tuple[int, int] | None = None  # (open, limit)
    descriptor_error: str = ""


class Vitals:
    """The gateway's own view of whether it can serve, for ``/health``.

    ``ping`` asks the engine for a sign of life (blocking; it runs in a worker thread).
    ``connections`` says how many HTTP connections are open (the edge's count), if known;
    ``engine_state`` the engine connection's own account (its breaker's state, reason and since when).
    ``hosts`` the same of the fleet's other hosts, by name: shown, and a degraded one is a reason
    (the gateway serves the others, so never a 503).
    """

    def __init__(
        self,
        ping: Callable[[], None],
        *,
        engine_down_timeout: float = 120.0,
        audit: AuditLog | None = None,
        connections: Callable[[], int] | None = None,
        engine_state: Callable[[], dict[str, Any]] | None = None,
        hosts: Callable[[], dict[str, dict[str, Any]]] | None = None,
    ) -> None:
        self.ping = ping
        self.hosts = hosts
        self.engine_down_timeout = engine_down_timeout
        self.audit = audit
        self.connections = connections
        self.engine_state = engine_state
        #: True while the MCP session manager runs (set by the HTTP app's lifespan).
        self.sessions_running = False
        self.tasks: dict[str, _TaskState] = {}
        self._probe = _Probe()
        self._engine_down_since: float | None = None
        self._lock = anyio.Lock()
        self._pinging = threading.Event()

    # -- background tasks ---------------------------------------------------------------------

    def task_failed(self, name: str, error: BaseException, *, after_stable_run: bool = False) -> int:
        """Count a failure of the task ``name``; returns how many in a row.

        ``after_stable_run``: it had run long enough before failing to count as a new outage.
        """
        state = self.tasks.setdefault(name, _TaskState())
        state.failures = 1 if after_stable_run else state.failures + 1
        state.last_error = f"{type(error).__name__}: {error}"[:200]
        state.last_failed = anyio.current_time()
        return state.failures

    # -- the answer -----------------------------------------------------------------------------

    async def report(self) -> Report:
        """Probe (at most once per :data:`PROBE_TTL_S`) and say whether the gateway can serve."""
        probe = await self._fresh_probe()
        failing: list[str] = []
        degraded: list[str] = []
        if not self.sessions_running:
            failing.append("the MCP session manager is not running: no MCP request can be served")
        if probe.descriptor_error:
            failing.append(probe.descriptor_error)
        elif probe.descriptors is not None:
            used, limit = probe.descriptors
            if limit - used < DESCRIPTOR_FLOOR:
                failing.append(f"file descriptors nearly exhausted: {used} open of a limit of {limit}")
        if not probe.engine_up:
            down_for = anyio.current_time() - (self._engine_down_since or anyio.current_time())
            message = f"the Docker engine has not answered for {down_for:.0f} s"
            (failing if down_for > self.engine_down_timeout else degraded).append(message)
        for name, state in sorted(self.tasks.items()):
            if anyio.current_time() - state.last_failed < _STABLE_RUN_S:
                degraded.append(f"{name} failed ({state.failures} in a row, retried): {state.last_error}")
        hosts = self.hosts() if self.hosts is not None else {}
        for host, host_state in sorted(hosts.items()):  # known from the hosts' own calls: nothing is asked
            if host_state.get("status") == "degraded":
                degraded.append(f"host {host} is degraded: {host_state.get('reason')}")
        if self.audit is not None and self.audit.space.low:
            degraded.append("the audit log's disk is under its reserve: refusals are counted, not written")
        # The reasons come right after the status: a probe quotes the first few hundred bytes.
        body: dict[str, Any] = {"status": "failing" if failing else "degraded" if degraded else "ok"}
        if failing or degraded:
            body["reasons"] = failing + degraded
        body.update(version=__version__, engine="up" if probe.engine_up else "down")
        if self.engine_state is not None:
            body["engine_state"] = self.engine_state()
        if hosts:
            body["hosts"] = hosts
        if probe.descriptors is not None:
            body["descriptors"] = {"open": probe.descriptors[0], "limit": probe.descriptors[1]}
        if self.connections is not None:
            body["connections"] = self.connections()
        return Report(503 if failing else 200, body)

    async def _fresh_probe(self) -> _Probe:
        async with self._lock:
            now = anyio.current_time()
            if now - self._probe.at < PROBE_TTL_S:
                return self._probe
            probe = _Probe(at=now, engine_up=await self._engine_answers())
            try:
                probe.descriptors = _descriptors()
            except OSError as exc:
                probe.descriptor_error = f"cannot count file descriptors ({exc.strerror or exc}): likely exhausted"
            now = anyio.current_time()
            if probe.engine_up:
                self._engine_down_since = None
            elif self._engine_down_since is None:
                self._engine_down_since = now
            self._probe = probe
            return probe

    async def _engine_answers(self) -> bool:
        if self._pinging.is_set():
            return False  # the last ping has not returned yet: the engine is not answering
        self._pinging.set()

        def ping() -> None:
            try:
                self.ping()
            finally:
                self._pinging.clear()

        with anyio.move_on_after(PING_TIMEOUT_S):
            try:
                await anyio.to_thread.run_sync(ping, abandon_on_cancel=True)
            except Exception:  # noqa: BLE001 - any failure means the same to a health probe
                return False
            return True
        return False


def _descriptors() -> tuple[int, int] | None:
    """(open descriptors, soft limit) of this process, or None where ``/proc`` does not say.

    Raises:
        OSError: they cannot be counted (EMFILE itself, most likely).
    """
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY or not _FD_DIR.is_dir():
        return None
    # The listing's own descriptor is counted too, as it should be: it is one the process needs.
    return len(os.listdir(_FD_DIR)), limit


async def supervise(
    name: str, task: BackgroundTask, vitals: Vitals | None = None, *, backoff: Backoff | None = None
) -> None:
    """Run ``task`` until cancelled; when it fails (or returns), log, back off, and run it again.

    Nothing it raises reaches the caller's task group: a background task that fails must not take
    the sessions it shares a task group with down with it.
    """
    backoff = backoff or Backoff(1.0, 60.0)
    while True:
        started = anyio.current_time()
        try:
            await task()
        except Exception as exc:  # noqa: BLE001 - whatever it was, the server must outlive it
            error: BaseException = exc
        else:
            error = RuntimeError("returned")
        stable = anyio.current_time() - started >= _STABLE_RUN_S
        if stable:
            backoff.reset()
        delay = backoff.next()
        failures = vitals.task_failed(name, error, after_stable_run=stable) if vitals is not None else backoff.failures
        # The first failure with its traceback; the repeats of an outage in one line each.
        logger.warning(
            "%s failed (%d in a row): %s; starting it again in %.1f s",
            name,
            failures,
            f"{type(error).__name__}: {error}",
            delay,
            exc_info=error if failures == 1 else None,
        )
        await anyio.sleep(delay)
