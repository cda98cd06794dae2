"""The supervisor: watches the target through events and periodic inspects, and restarts it.

Decisions belong to :class:`~watchdog.scheduler.RestartScheduler`; this module does the I/O:
docker-py calls (in worker threads), the events follower, the status endpoint, and the log lines.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import docker
import docker.errors
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .config import WatchdogConfig
from .engine import connect, version_refused
from .errors import DockerUnavailable
from .events import EventStream
from .health import Health, State, advice, classify
from .outage import EngineOutage
from .scheduler import Change, RestartScheduler, Status
from .status import bind_socket, create_app, serve_status

__all__ = ["ComposeAgentWatchdog", "kv"]

logger = logging.getLogger(__name__)

_LEVELS = {
    State.HEALTHY: logging.INFO,
    State.UNHEALTHY: logging.WARNING,
    State.GLIBC_MISMATCH: logging.WARNING,
    State.NOT_FOUND: logging.WARNING,
    State.GAVE_UP: logging.ERROR,
}


def kv(**fields: object) -> str:
    """One ``key=value`` log line; values with spaces, quotes or ``=`` are JSON-quoted."""
    parts = []
    for key, value in fields.items():
        if value is None:
            text = "null"
        elif isinstance(value, float):
            text = f"{value:g}"
        else:
            text = str(value)
        if not text or any(c in text for c in ' "=\n\t'):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    return " ".join(parts)


class ComposeAgentWatchdog:
    """Keeps one container alive: detect (events + periodic inspect), classify, restart with backoff.

    ``client`` is a docker-py ``DockerClient``; without one, :meth:`run` makes one for the engine
    that ``environment`` names (``DOCKER_HOST``; None: the process environment, as docker-py reads
    it), negotiating the API version, and closes it afterwards. A client of its own that the engine
    stops accepting (an engine upgraded under the watchdog) is replaced by a new negotiation.
    ``now``/``wall`` are the clocks handed to the scheduler. ``on_change`` is called with every
    :class:`Change` (after it is logged).
    """

    def __init__(
        self,
        config: WatchdogConfig,
        client: Any = None,
        *,
        now: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_change: Callable[[Change], None] | None = None,
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self._environment = environment
        self._reconnect = False  # the engine refused our API version: negotiate again before the next check
        self.scheduler = RestartScheduler(config, now=now, wall=wall)
        self._now = now
        self._client = client
        self._on_change = on_change
        self.events: EventStream | None = None
        #: How many inspects completed, and how many restarts the watchdog issued (for tests and the bench).
        self.checks = 0
        self.restarts = 0
        self.status_port: int | None = None
        self._started = anyio.Event()
        self._events_open = config.watch_events
        self._outage = EngineOutage(max_delay=config.check_interval_secs)
        self._own_client = False

    def status(self) -> Status:
        """The current view of the target, as ``GET /status`` reports it."""
        return self.scheduler.status()

    async def wait_started(self) -> None:
        """Wait until the first check is done and the status endpoint (if any) listens."""
        await self._started.wait()

    async def run(self) -> None:
        """Supervise until cancelled. Closes the docker client it made, so the events read returns.

        Raises:
            DockerUnavailable: no docker client could be made from the environment.
            StatusServerError: the status endpoint cannot listen.
        """
        own_client = self._client is None
        if own_client:
            self._client = await anyio.to_thread.run_sync(connect, self._environment)
        self._own_client = own_client
        sock = None
        if self.config.status_port is not None:
            sock = bind_socket(self.config.status_host, self.config.status_port)
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](max_buffer_size=256)
        logger.info(
            "%s",
            kv(
                event="watchdog_started",
                target=self.config.target_container,
                check_interval_s=self.config.check_interval_secs,
                initial_delay_s=self.config.initial_delay_secs,
                backoff_multiplier=self.config.restart_backoff_multiplier,
                max_restart_attempts=self.config.max_restart_attempts,
                stable_period_s=self.config.stable_period,
                events=self.config.watch_events,
            ),
        )
        try:
            async with receive, anyio.create_task_group() as tg:
                if self.config.watch_events:
                    self.events = EventStream(
                        self._client, self.config.target_container, self.config.events_reconnect_delay_secs
                    )
                    tg.start_soon(self._follow_events, self.events, send)
                else:
                    send.close()
                await self._check_and_act()
                if sock is not None:
                    app = create_app(self.status)
                    self.status_port = await tg.start(serve_status, app, sock)
                    sock = None
                self._started.set()
                await self._supervise(receive)
        finally:
            send.close()
            if sock is not None:
                sock.close()
            if self.events is not None:
                self.events.close()
            if own_client:
                self._client.close()
                self._client = None
            logger.info("%s", kv(event="watchdog_stopped", target=self.config.target_container))

    async def _follow_events(self, events: EventStream, send: MemoryObjectSendStream[dict[str, Any]]) -> None:
        def offer(event: dict[str, Any]) -> None:
            # Events only wake the supervisor up: when the buffer is full a check is pending anyway.
            try:
                send.send_nowait(event)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

        def deliver(event: dict[str, Any]) -> None:
            anyio.from_thread.run_sync(offer, event)

        async def close_on_cancel() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                events.close()  # makes the blocked read return, so the thread below ends

        async with send, anyio.create_task_group() as tg:
            tg.start_soon(close_on_cancel)
            # Not abandoned on cancel: the thread is waited for, so no socket outlives the watchdog.
            await anyio.to_thread.run_sync(events.follow, deliver)
            tg.cancel_scope.cancel()

    async def _supervise(self, receive: MemoryObjectReceiveStream[dict[str, Any]]) -> None:
        interval = self.config.check_interval_secs
        next_check = self._now() + interval
        while True:
            delay = max(0.0, self._next_deadline(next_check) - self._now())
            await self._wait_for_wakeup(receive, delay)
            await self._check_and_act()
            next_check = self._now() + interval

    def _next_deadline(self, next_check: float) -> float:
        """When to look next: the periodic check, or sooner when the schedule needs attention.

        While the engine is unreachable, only the retry time counts. The schedule's wake-up is then
        usually in the past (a restart that fell due, the end of a stable period), and heeding it
        would inspect again at once, in a tight loop, for as long as the outage lasts.
        """
        if self._outage.retry_at is not None:
            return self._outage.retry_at
        wakeup = self.scheduler.next_wakeup()
        return next_check if wakeup is None else min(next_check, wakeup)

    async def _wait_for_wakeup(self, receive: MemoryObjectReceiveStream[dict[str, Any]], delay: float) -> None:
        """Sleep for ``delay`` seconds, or less if a Docker event for the target arrives first."""
        with anyio.move_on_after(delay):
            if self._events_open:
                try:
                    event = await receive.receive()
                    self._log_event(event)
                    while True:  # several events usually come together: one inspect covers them all
                        self._log_event(receive.receive_nowait())
                except anyio.WouldBlock:
                    pass
                except anyio.EndOfStream:
                    self._events_open = False
                    logger.warning("%s", kv(event="events_stopped", target=self.config.target_container))
            else:
                await anyio.sleep(math.inf)

    def _log_event(self, event: dict[str, Any]) -> None:
        logger.debug(
            "%s",
            kv(event="docker_event", target=self.config.target_container, action=event.get("Action")),
        )

    async def _check_and_act(self) -> None:
        """Inspect, classify, feed the scheduler; restart while one is due (then look again)."""
        while True:
            try:
                if self._reconnect:
                    await self._renegotiate()
                health = await self._inspect()
            except DockerUnavailable as exc:
                self._check_failed(exc)
                return
            self._check_answered()
            self.checks += 1
            for change in self.scheduler.observe(health):
                self._report(change, health)
            if not self.scheduler.restart_due():
                return
            await self._restart()

    def _check_failed(self, exc: DockerUnavailable) -> None:
        """Back off before the next try, and log the outage once, not once per try."""
        outage = self._outage
        outage.failed(self._now())
        logger.log(
            logging.WARNING if outage.failed_checks == 1 else logging.DEBUG,
            "%s",
            kv(
                event="check_failed",
                target=self.config.target_container,
                error=str(exc),
                failed_checks=outage.failed_checks,
                retry_in_s=outage.retry_delay,
            ),
        )

    def _check_answered(self) -> None:
        """End the outage, if there was one, with one line."""
        recovery = self._outage.answered(self._now())
        if recovery is None:
            return
        logger.info(
            "%s",
            kv(
                event="check_recovered",
                target=self.config.target_container,
                outage_s=recovery.outage_s,
                failed_checks=recovery.failed_checks,
            ),
        )

    async def _renegotiate(self) -> None:
        """Replace the client the engine refused with a newly negotiated one; the events follow it."""
        fresh = await anyio.to_thread.run_sync(connect, self._environment)
        stale, self._client = self._client, fresh
        self._reconnect = False
        if self.events is not None:
            self.events.client = fresh
            self.events.drop()  # its stream is still the refused client's: reconnect on the new one
        await anyio.to_thread.run_sync(stale.close)
        logger.info("%s", kv(event="engine_renegotiated", target=self.config.target_container))

    async def _inspect(self) -> Health:
        attrs = await anyio.to_thread.run_sync(self._inspect_sync)
        health = classify(attrs)
        if attrs is not None and health.failing:
            logs = await anyio.to_thread.run_sync(self._logs_sync)
            health = classify(attrs, logs)
        return health

    def _inspect_sync(self) -> dict[str, Any] | None:
        try:
            attrs: dict[str, Any] = self._client.api.inspect_container(self.config.target_container)
        except docker.errors.NotFound:
            return None
        except Exception as exc:  # noqa: BLE001 - requests' connection errors reach us unwrapped
            if version_refused(exc) and self._own_client:
                self._reconnect = True
            raise DockerUnavailable(f"inspect failed: {exc}") from exc
        return attrs

    def _logs_sync(self) -> str:
        # The whole tail, not only the last run: the engine may not have written a run's last
        # lines yet when its exit is seen, and a container restarted with the same image fails
        # the same way, so older runs' lines are evidence too.
        try:
            raw = self._client.api.logs(
                self.config.target_container,
                stdout=True,
                stderr=True,
                tail=self.config.log_tail_lines,
            )
        except Exception as exc:  # noqa: BLE001 - the logs only refine a diagnosis; missing them is not fatal
            logger.debug("%s", kv(event="logs_failed", target=self.config.target_container, error=str(exc)))
            return ""
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)

    async def _restart(self) -> None:
        attempt = self.scheduler.record_restart()
        self.restarts += 1
        target = self.config.target_container
        logger.warning(
            "%s",
            kv(
                event="restart",
                target=target,
                attempt=attempt,
                max_restart_attempts=self.config.max_restart_attempts,
                state=self.scheduler.state,
                reason=self.scheduler.reason,
            ),
        )
        try:
            await anyio.to_thread.run_sync(self._restart_sync)
        except Exception as exc:  # noqa: BLE001 - a failed attempt still counts; the next inspect tells the rest
            logger.warning("%s", kv(event="restart_failed", target=target, attempt=attempt, error=str(exc)))

    def _restart_sync(self) -> None:
        self._client.api.restart(self.config.target_container, timeout=self.config.restart_stop_timeout_secs)

    def _report(self, change: Change, health: Health) -> None:
        target = self.config.target_container
        if change.kind == "counter_reset":
            logger.info(
                "%s",
                kv(
                    event="counter_reset",
                    target=target,
                    state=change.state,
                    stable_period_s=self.config.stable_period,
                ),
            )
        else:
            transition = {"event": "transition", "target": target, "previous": change.previous, "state": change.state}
            if change.state is State.GAVE_UP:
                diagnosis = change.diagnosis or State.UNHEALTHY
                line = kv(
                    **transition,
                    diagnosis=diagnosis,
                    reason=change.reason,
                    restart_attempts=change.restart_attempts,
                    action=f"stopped restarting; {advice(diagnosis, change.reason)}",
                )
            else:
                line = kv(
                    **transition,
                    reason=change.reason,
                    restart_attempts=change.restart_attempts,
                    next_restart_in_s=change.next_restart_in_s,
                    engine_restart_count=health.restart_count,
                )
            logger.log(_LEVELS.get(change.state, logging.INFO), "%s", line)
        if self._on_change is not None:
            self._on_change(change)
