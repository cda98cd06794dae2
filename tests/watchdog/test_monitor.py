"""The watchdog against a real engine (kill, failing healthcheck, GLIBC, removal, reset, dropped events), and
against a fake engine on a fake clock for what a real one cannot do on demand here: stop answering."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import requests
from anyio.streams.memory import MemoryObjectReceiveStream

from watchdog import Change, ComposeAgentWatchdog, State, WatchdogConfig

from .conftest import GLIBC_LINE, Targets, config, supervising, wait_until

pytestmark = pytest.mark.anyio


@pytest.mark.docker
async def test_a_killed_target_is_restarted_once(targets: Targets) -> None:
    # How fast (within one initial delay plus a second) is measured by bench/watchdog_detection.py;
    # the bound here only keeps a broken watchdog from hanging the suite.
    target = targets.run().name
    before = targets.started_at(target)
    watchdog = ComposeAgentWatchdog(config(target, initial_delay_secs=0.2))
    async with supervising(watchdog):
        assert watchdog.status().state == "Healthy"
        await anyio.to_thread.run_sync(lambda: targets.client.api.kill(target))
        await wait_until(lambda: targets.running(target) and targets.started_at(target) != before, 15, "the restart")
        await wait_until(lambda: watchdog.status().state == "Healthy", 5, "Healthy again")
        assert watchdog.restarts == 1
        assert watchdog.status().restart_attempts == 1


@pytest.mark.docker
async def test_a_stopped_target_is_restarted(targets: Targets) -> None:
    target = targets.run().name
    watchdog = ComposeAgentWatchdog(config(target))
    async with supervising(watchdog):
        await anyio.to_thread.run_sync(lambda: targets.client.api.stop(target, timeout=1))
        await wait_until(lambda: watchdog.restarts == 1 and targets.running(target), 5, "the restart")


@pytest.mark.docker
async def test_a_failing_healthcheck_is_unhealthy_and_restarted(targets: Targets) -> None:
    healthcheck = {
        "test": ["CMD-SHELL", "echo probe says no; exit 1"],
        "interval": 200_000_000,  # ns
        "timeout": 1_000_000_000,
        "retries": 1,
    }
    target = targets.run(healthcheck=healthcheck).name
    before = targets.started_at(target)
    seen: list[Change] = []
    watchdog = ComposeAgentWatchdog(config(target, max_restart_attempts=10), on_change=seen.append)
    async with supervising(watchdog):
        await wait_until(lambda: watchdog.restarts >= 1, 10, "a restart")
        await wait_until(lambda: targets.started_at(target) != before, 5, "a new start")
    unhealthy = [c for c in seen if c.state is State.UNHEALTHY]
    assert unhealthy, seen
    assert unhealthy[0].reason == "healthcheck failing (last probe exit code 1: probe says no)"


@pytest.mark.docker
async def test_a_glibc_failure_is_diagnosed_then_given_up_after_exactly_n_restarts(
    targets: Targets, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    starts = tmp_path / "starts"
    script = f'echo start >> /data/starts; echo "{GLIBC_LINE.replace("`", chr(92) + "`")}"; exit 1'
    target = targets.run(["sh", "-c", script], volumes={str(tmp_path): {"bind": "/data", "mode": "rw"}}).name
    await wait_until(lambda: not targets.running(target), 5, "the target to exit")
    seen: list[Change] = []
    watchdog = ComposeAgentWatchdog(config(target, max_restart_attempts=3), on_change=seen.append)
    with caplog.at_level(logging.INFO, logger="watchdog"):
        async with supervising(watchdog):
            await wait_until(lambda: watchdog.status().state == "GaveUp", 15, "GaveUp")
            checks = watchdog.checks
            # Still observing, no longer restarting.
            await wait_until(lambda: watchdog.checks >= checks + 3, 5, "three more checks")
            status = watchdog.status()
    states = [c.state for c in seen]
    assert State.GLIBC_MISMATCH in states
    assert states.index(State.GLIBC_MISMATCH) < states.index(State.GAVE_UP)
    assert watchdog.restarts == 3 and status.restart_attempts == 3
    assert starts.read_text().count("start") == 1 + 3, "the engine saw the first start and exactly 3 restarts"
    assert status.next_restart_in_s is None
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "diagnosis=GlibcMismatch" in errors[0] and "GLIBC_2.38" in errors[0]
    assert "compatible base image" in errors[0] and "static/musl" in errors[0]


@pytest.mark.docker
async def test_a_missing_target_is_not_found_and_never_restarted(targets: Targets) -> None:
    watchdog = ComposeAgentWatchdog(config(targets.name(), check_interval_secs=0.1))
    async with supervising(watchdog):
        assert watchdog.status().state == "NotFound"
        await wait_until(lambda: watchdog.checks >= 5, 5, "five checks")
    assert watchdog.restarts == 0
    assert watchdog.status().restart_attempts == 0


@pytest.mark.docker
async def test_a_removed_target_becomes_not_found_without_a_restart_attempt(targets: Targets) -> None:
    target = targets.run().name
    seen: list[Change] = []
    watchdog = ComposeAgentWatchdog(config(target, initial_delay_secs=1.0), on_change=seen.append)
    async with supervising(watchdog):
        await anyio.to_thread.run_sync(lambda: targets.client.api.remove_container(target, force=True))
        await wait_until(lambda: watchdog.status().state == "NotFound", 5, "NotFound")
        checks = watchdog.checks
        await wait_until(lambda: watchdog.checks >= checks + 3, 5, "three more checks")
    assert watchdog.restarts == 0
    assert seen[-1].state is State.NOT_FOUND


@pytest.mark.docker
async def test_the_counter_resets_after_a_stable_period(targets: Targets) -> None:
    target = targets.run().name
    seen: list[Change] = []
    fast = config(target, check_interval_secs=0.2, stable_period_secs=1.0)
    watchdog = ComposeAgentWatchdog(fast, on_change=seen.append)
    async with supervising(watchdog):
        await anyio.to_thread.run_sync(lambda: targets.client.api.kill(target))
        await wait_until(lambda: watchdog.status().restart_attempts == 1, 5, "the first restart")
        await wait_until(lambda: watchdog.status().restart_attempts == 0, 5, "the reset")
        assert watchdog.status().state == "Healthy"
    assert [c.kind for c in seen].count("counter_reset") == 1


@pytest.mark.docker
async def test_a_dropped_events_stream_loses_no_failure(targets: Targets) -> None:
    target = targets.run().name
    before = targets.started_at(target)
    # Polling is far away and the reconnect is slow: only the replayed events can catch the kill.
    watchdog = ComposeAgentWatchdog(config(target, check_interval_secs=120, events_reconnect_delay_secs=1.0))
    async with supervising(watchdog):
        events = watchdog.events
        assert events is not None
        await wait_until(events.connected.is_set, 5, "the events stream")
        events.drop()
        await wait_until(lambda: not events.connected.is_set(), 5, "the stream to drop")
        await anyio.to_thread.run_sync(lambda: targets.client.api.kill(target))
        assert events.connections == 1, "the kill must happen while disconnected"
        await wait_until(lambda: targets.running(target) and targets.started_at(target) != before, 10, "the restart")
        assert events.connections == 2
        assert watchdog.restarts == 1


@pytest.mark.docker
async def test_dockerd_restart_policy_is_not_fought(targets: Targets) -> None:
    target = targets.run(["sh", "-c", "sleep 0.3; exit 3"], restart_policy={"Name": "always"}).name
    watchdog = ComposeAgentWatchdog(config(target, check_interval_secs=0.1, initial_delay_secs=0.0))

    def restart_count() -> Any:
        return targets.client.api.inspect_container(target)["RestartCount"]

    async with supervising(watchdog):
        await wait_until(lambda: restart_count() >= 2, 10, "dockerd to restart it twice")
        await wait_until(lambda: "RestartCount" in watchdog.status().reason, 5, "the engine's restart seen")
    assert watchdog.restarts == 0


# --- The engine stops answering: a fake engine on a fake clock, so hours pass in milliseconds. ---

EXITED = {"State": {"Status": "exited", "Running": False, "ExitCode": 1}, "RestartCount": 0}
RUNNING = {"State": {"Status": "running", "Running": True}, "RestartCount": 0}


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeEngine:
    """Stands in for docker-py's low-level API; between ``down_from`` and ``down_until`` every call fails
    the way docker-py fails when dockerd is gone: with requests' ConnectionError, unwrapped."""

    def __init__(self, clock: FakeClock, *, down_from: float, down_until: float = math.inf) -> None:
        self.clock = clock
        self.down_from = down_from
        self.down_until = down_until
        self.running = False
        self.inspects = 0
        self.answered: list[float] = []  # when an inspect got an answer
        self.restarts: list[float] = []  # when a restart went through
        #: When set, a restarted target crashes again at once (a crash loop).
        self.crash_on_start = False

    @property
    def api(self) -> FakeEngine:
        return self

    def _reachable(self) -> None:
        if self.down_from <= self.clock() < self.down_until:
            raise requests.exceptions.ConnectionError(
                "('Connection aborted.', FileNotFoundError(2, 'No such file or directory'))"
            )

    def inspect_container(self, name: str) -> dict[str, Any]:
        self.inspects += 1
        self._reachable()
        self.answered.append(self.clock())
        return RUNNING if self.running else EXITED

    def logs(self, name: str, **kwargs: Any) -> bytes:
        self._reachable()
        return b"crashed\n"

    def restart(self, name: str, timeout: int) -> None:
        self._reachable()
        self.restarts.append(self.clock())
        self.running = not self.crash_on_start


class SimulatedWatchdog(ComposeAgentWatchdog):
    """The real watchdog, except that waiting for the next wake-up moves the fake clock instead of sleeping.

    It stops once the clock reaches ``until``, or after 10,000 waits (a spin would never move the clock).
    """

    def __init__(self, config: WatchdogConfig, engine: FakeEngine, clock: FakeClock, until: float) -> None:
        super().__init__(config, engine, now=clock, wall=lambda: 1_700_000_000.0)
        self.clock = clock
        self.until = until
        self.waits = 0
        self.scope = anyio.CancelScope()

    async def _wait_for_wakeup(self, receive: MemoryObjectReceiveStream[dict[str, Any]], delay: float) -> None:
        self.waits += 1
        self.clock.t = min(self.clock.t + delay, self.until)
        if self.clock.t >= self.until or self.waits >= 10_000:
            self.scope.cancel()
        await anyio.lowlevel.checkpoint()

    async def simulate(self) -> None:
        with self.scope:
            await self.run()


def simulated(engine: FakeEngine, clock: FakeClock, period: float, **overrides: Any) -> SimulatedWatchdog:
    settings: dict[str, Any] = {"check_interval_secs": 30, "initial_delay_secs": 10, "watch_events": False}
    return SimulatedWatchdog(WatchdogConfig(**{**settings, **overrides}), engine, clock, until=clock() + period)


def outage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "event=check_failed" in r.getMessage()
    ]


def backoff_bound(period: float, interval: float) -> float:
    """Inspects allowed in ``period`` of outage: 1, 2, 4, ... s up to the interval, then one per interval."""
    return math.log2(interval) + 1 + period / interval + 2


async def test_an_unreachable_engine_is_retried_with_backoff_while_a_restart_is_due(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    # The first inspect sees the crash (restart due in 10 s), then dockerd goes away for good.
    engine = FakeEngine(clock, down_from=clock() + 1)
    watchdog = simulated(engine, clock, period=600)
    with caplog.at_level(logging.DEBUG, logger="watchdog"):
        await watchdog.simulate()
    assert watchdog.waits < 10_000, "the watchdog spun without letting time pass"
    assert engine.inspects <= backoff_bound(600, 30), engine.inspects
    assert engine.inspects >= 600 / 30, "it must keep trying, at least once per check interval"
    assert len(outage_warnings(caplog)) == 1
    assert engine.restarts == [] and watchdog.status().restart_attempts == 0


async def test_an_unreachable_engine_is_retried_with_backoff_when_the_stable_period_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    start = clock()
    # Crash, restart at +10 s, healthy since; the counter would reset at +310 s, but dockerd is gone from +100 s.
    engine = FakeEngine(clock, down_from=start + 100)
    watchdog = simulated(engine, clock, period=1000, stable_period_secs=300)
    with caplog.at_level(logging.DEBUG, logger="watchdog"):
        await watchdog.simulate()
    assert engine.restarts == [start + 10]
    assert watchdog.waits < 10_000, "the watchdog spun without letting time pass"
    assert engine.inspects - len(engine.answered) <= backoff_bound(900, 30)
    assert len(outage_warnings(caplog)) == 1
    assert watchdog.status().restart_attempts == 1, "no reset without an observation of the stable period"


async def test_a_due_restart_happens_at_the_first_answer_after_an_outage_which_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    start = clock()
    engine = FakeEngine(clock, down_from=start + 1, down_until=start + 200)
    watchdog = simulated(engine, clock, period=400)
    with caplog.at_level(logging.INFO, logger="watchdog"):
        await watchdog.simulate()
    first_answer = next(t for t in engine.answered if t >= start + 200)
    assert first_answer <= start + 200 + 30, "the engine is tried again within one check interval"
    assert engine.restarts == [first_answer], "the restart that fell due during the outage goes out at once"
    assert watchdog.status().state == "Healthy" and watchdog.status().restart_attempts == 1
    assert len(outage_warnings(caplog)) == 1
    recovered = [r for r in caplog.records if "event=check_recovered" in r.getMessage()]
    assert len(recovered) == 1 and recovered[0].levelno == logging.INFO


async def test_the_restart_schedule_and_the_give_up_are_the_same_across_an_outage() -> None:
    clock = FakeClock()
    start = clock()
    # A crash loop; dockerd is away between the first and the second restart.
    engine = FakeEngine(clock, down_from=start + 11, down_until=start + 20)
    engine.crash_on_start = True
    watchdog = simulated(engine, clock, period=3600, check_interval_secs=300)
    await watchdog.simulate()
    delays = [b - a for a, b in zip([start, *engine.restarts], engine.restarts, strict=False)]
    assert delays == pytest.approx([10.0, 15.0, 22.5, 33.75, 50.625])
    assert watchdog.status().state == "GaveUp" and watchdog.status().restart_attempts == 5
