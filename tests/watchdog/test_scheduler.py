"""The restart schedule, give-up and counter reset, driven by a fake clock: nothing here waits."""

from __future__ import annotations

import pytest

from watchdog import Health, RestartScheduler, State, WatchdogConfig

DOWN = Health(State.UNHEALTHY, "exited with code 1")
GLIBC = Health(State.GLIBC_MISMATCH, "exited with code 1; the image needs GLIBC_2.38")
UP = Health(State.HEALTHY)
GONE = Health(State.NOT_FOUND, "no such container")


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, secs: float) -> None:
        self.t += secs


def make(clock: FakeClock, **overrides: object) -> RestartScheduler:
    return RestartScheduler(WatchdogConfig.model_validate(overrides), now=clock, wall=lambda: 1_700_000_000.0)


def restarted_once(clock: FakeClock, **overrides: object) -> RestartScheduler:
    """A scheduler whose target failed, was restarted 10 s later (the initial delay), and now runs healthy."""
    scheduler = make(clock, **overrides)
    scheduler.observe(DOWN)
    clock.advance(10)
    scheduler.record_restart()
    scheduler.observe(UP)
    return scheduler


def run_until_gave_up(scheduler: RestartScheduler, clock: FakeClock, failure: Health) -> list[float]:
    """Keep failing; return the delay the scheduler waited before each restart."""
    delays = []
    scheduler.observe(failure)
    while scheduler.state is not State.GAVE_UP:
        assert scheduler.next_restart_at is not None
        delay = scheduler.next_restart_at - clock()
        clock.advance(delay - 0.001)
        assert not scheduler.restart_due(), "a restart must not come early"
        clock.advance(0.001)
        assert scheduler.restart_due()
        scheduler.record_restart()
        delays.append(delay)
        scheduler.observe(failure)
    return delays


def test_default_delays_are_10_15_22_5_33_75_and_50_6_seconds() -> None:
    clock = FakeClock()
    scheduler = make(clock)
    delays = run_until_gave_up(scheduler, clock, DOWN)
    assert delays == pytest.approx([10.0, 15.0, 22.5, 33.75, 50.625])
    assert scheduler.attempts == 5


def test_delay_before_attempt_n_is_initial_times_multiplier_to_the_n_minus_1() -> None:
    clock = FakeClock()
    scheduler = make(clock, initial_delay_secs=2, restart_backoff_multiplier=3, max_restart_attempts=4)
    assert run_until_gave_up(scheduler, clock, DOWN) == pytest.approx([2, 6, 18, 54])


def test_gives_up_after_exactly_max_attempts_and_keeps_the_diagnosis() -> None:
    clock = FakeClock()
    scheduler = make(clock, max_restart_attempts=3)
    changes = []
    scheduler.observe(GLIBC)
    while scheduler.state is not State.GAVE_UP:
        clock.advance(1000)
        assert scheduler.restart_due()
        scheduler.record_restart()
        changes += scheduler.observe(GLIBC)
    assert scheduler.attempts == 3
    gave_up = [c for c in changes if c.state is State.GAVE_UP]
    assert len(gave_up) == 1 and gave_up[0].diagnosis is State.GLIBC_MISMATCH
    # GaveUp means no more restarts, however long it keeps failing.
    for _ in range(5):
        clock.advance(1000)
        assert scheduler.observe(GLIBC) == []
        assert not scheduler.restart_due()
        assert scheduler.next_restart_in() is None
    assert scheduler.status().state == "GaveUp"


def test_zero_attempts_gives_up_on_the_first_failure() -> None:
    clock = FakeClock()
    scheduler = make(clock, max_restart_attempts=0)
    scheduler.observe(DOWN)
    assert scheduler.state is State.GAVE_UP and scheduler.next_restart_at is None


def test_a_brief_healthy_spell_does_not_reset_the_counter() -> None:
    clock = FakeClock()
    scheduler = make(clock, max_restart_attempts=3, check_interval_secs=30)
    scheduler.observe(DOWN)
    for _ in range(3):
        clock.advance(100)
        scheduler.record_restart()
        scheduler.observe(UP)  # it starts, looks fine for a while...
        clock.advance(299)  # ...but less than the stable period of 10 x 30 s
        scheduler.observe(UP)
        scheduler.observe(DOWN)
    assert scheduler.state is State.GAVE_UP
    assert scheduler.attempts == 3


def test_counter_resets_after_ten_check_intervals_of_health_by_default() -> None:
    clock = FakeClock()
    scheduler = restarted_once(clock, check_interval_secs=30)
    assert scheduler.next_wakeup() == pytest.approx(clock() + 300)
    clock.advance(299.9)
    assert [c.kind for c in scheduler.observe(UP)] == []
    assert scheduler.attempts == 1
    clock.advance(0.1)
    assert [c.kind for c in scheduler.observe(UP)] == ["counter_reset"]
    assert scheduler.attempts == 0
    assert scheduler.next_wakeup() is None


def test_an_explicit_stable_period_overrides_the_default() -> None:
    clock = FakeClock()
    scheduler = restarted_once(clock, check_interval_secs=30, stable_period_secs=5)
    assert scheduler.attempts == 1
    clock.advance(5)
    scheduler.observe(UP)
    assert scheduler.attempts == 0


def test_after_a_reset_the_schedule_starts_again_from_the_initial_delay() -> None:
    clock = FakeClock()
    scheduler = restarted_once(clock, stable_period_secs=60)
    clock.advance(60)
    scheduler.observe(UP)
    scheduler.observe(DOWN)
    assert scheduler.next_restart_in() == pytest.approx(10.0)


def test_not_found_gets_no_restart_and_clears_the_counter() -> None:
    clock = FakeClock()
    scheduler = make(clock)
    scheduler.observe(DOWN)
    clock.advance(10)
    scheduler.record_restart()
    scheduler.observe(DOWN)
    changes = scheduler.observe(GONE)
    assert [(c.previous, c.state) for c in changes] == [(State.UNHEALTHY, State.NOT_FOUND)]
    assert scheduler.attempts == 0
    clock.advance(10_000)
    scheduler.observe(GONE)
    assert not scheduler.restart_due() and scheduler.next_wakeup() is None


def gave_up_after_one_restart(clock: FakeClock) -> RestartScheduler:
    scheduler = make(clock, max_restart_attempts=1)
    run_until_gave_up(scheduler, clock, DOWN)
    assert scheduler.state is State.GAVE_UP
    return scheduler


def test_after_giving_up_a_target_that_comes_back_healthy_is_reported_and_the_counter_resets() -> None:
    scheduler = gave_up_after_one_restart(FakeClock())
    changes = scheduler.observe(UP)
    assert [(c.previous, c.state) for c in changes] == [(State.GAVE_UP, State.HEALTHY)]
    assert scheduler.attempts == 0
    scheduler.observe(DOWN)
    assert scheduler.next_restart_in() == pytest.approx(10.0), "a new failure gets a fresh schedule"


def test_after_giving_up_a_target_that_disappears_is_not_found() -> None:
    scheduler = gave_up_after_one_restart(FakeClock())
    changes = scheduler.observe(GONE)
    assert [(c.previous, c.state) for c in changes] == [(State.GAVE_UP, State.NOT_FOUND)]
    assert scheduler.attempts == 0


def test_a_target_dockerd_is_restarting_is_left_alone() -> None:
    clock = FakeClock()
    scheduler = make(clock)
    scheduler.observe(DOWN)
    assert scheduler.next_restart_at is not None
    scheduler.observe(Health(State.UNHEALTHY, "being restarted by dockerd", engine_restarting=True, restart_count=3))
    assert scheduler.next_restart_at is None
    clock.advance(10_000)
    assert not scheduler.restart_due()
    assert scheduler.attempts == 0


def test_recovery_before_the_delay_cancels_the_pending_restart() -> None:
    clock = FakeClock()
    scheduler = make(clock)
    scheduler.observe(DOWN)
    clock.advance(5)
    scheduler.observe(UP)
    clock.advance(100)
    assert not scheduler.restart_due()
    assert scheduler.attempts == 0


def test_status_reports_the_countdown_and_the_last_transition() -> None:
    clock = FakeClock()
    scheduler = make(clock, target_container="compose-agent")
    assert scheduler.status().state == "Unknown"
    scheduler.observe(DOWN)
    clock.advance(4)
    assert scheduler.status().as_dict() == {
        "target": "compose-agent",
        "state": "Unhealthy",
        "reason": "exited with code 1",
        "restart_attempts": 0,
        "next_restart_in_s": 6.0,
        "last_transition_at": "2023-11-14T22:13:20+00:00",
    }


def test_every_state_change_is_reported_once() -> None:
    clock = FakeClock()
    scheduler = make(clock)
    assert [c.state for c in scheduler.observe(UP)] == [State.HEALTHY]
    assert scheduler.observe(UP) == []
    assert [c.state for c in scheduler.observe(DOWN)] == [State.UNHEALTHY]
    assert scheduler.observe(DOWN) == []
    assert [c.state for c in scheduler.observe(GLIBC)] == [State.GLIBC_MISMATCH]


def test_a_glibc_diagnosis_seen_once_is_kept_for_the_give_up_line() -> None:
    clock = FakeClock()
    scheduler = make(clock, max_restart_attempts=2)
    scheduler.observe(DOWN)  # the first exit was seen before its log line was written
    clock.advance(100)
    scheduler.record_restart()
    scheduler.observe(GLIBC)
    clock.advance(100)
    scheduler.record_restart()
    changes = scheduler.observe(DOWN)
    assert scheduler.state is State.GAVE_UP
    assert changes[-1].diagnosis is State.GLIBC_MISMATCH and "GLIBC_2.38" in changes[-1].reason
