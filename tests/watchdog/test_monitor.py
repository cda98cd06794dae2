"""The watchdog against a real engine: kill, failing healthcheck, GLIBC, removal, reset, dropped events."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

from watchdog import Change, ComposeAgentWatchdog, State

from .conftest import GLIBC_LINE, Targets, config, supervising, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


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


async def test_a_stopped_target_is_restarted(targets: Targets) -> None:
    target = targets.run().name
    watchdog = ComposeAgentWatchdog(config(target))
    async with supervising(watchdog):
        await anyio.to_thread.run_sync(lambda: targets.client.api.stop(target, timeout=1))
        await wait_until(lambda: watchdog.restarts == 1 and targets.running(target), 5, "the restart")


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


async def test_a_missing_target_is_not_found_and_never_restarted(targets: Targets) -> None:
    watchdog = ComposeAgentWatchdog(config(targets.name(), check_interval_secs=0.1))
    async with supervising(watchdog):
        assert watchdog.status().state == "NotFound"
        await wait_until(lambda: watchdog.checks >= 5, 5, "five checks")
    assert watchdog.restarts == 0
    assert watchdog.status().restart_attempts == 0


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


async def test_dockerd_restart_policy_is_not_fought(targets: Targets) -> None:
    target = targets.run(["sh", "-c", "sleep 0.3; exit 3"], restart_policy={"Name": "always"}).name
    watchdog = ComposeAgentWatchdog(config(target, check_interval_secs=0.1, initial_delay_secs=0.0))

    def restart_count() -> Any:
        return targets.client.api.inspect_container(target)["RestartCount"]

    async with supervising(watchdog):
        await wait_until(lambda: restart_count() >= 2, 10, "dockerd to restart it twice")
        await wait_until(lambda: "RestartCount" in watchdog.status().reason, 5, "the engine's restart seen")
    assert watchdog.restarts == 0
