"""The engine outage's backoff, on a clock the test moves: no test waits for a delay."""

from __future__ import annotations

from watchdog.outage import EngineOutage, Recovery


def test_the_pause_before_the_next_try_starts_at_a_second_and_doubles_up_to_the_check_interval() -> None:
    outage = EngineOutage(max_delay=10.0)
    delays = []
    for now in (100.0, 101.0, 103.0, 107.0, 115.0, 125.0):
        outage.failed(now)
        delays.append(outage.retry_delay)
        assert outage.retry_at == now + outage.retry_delay
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert outage.since == 100.0 and outage.failed_checks == 6


def test_a_check_interval_under_a_second_caps_even_the_first_pause() -> None:
    outage = EngineOutage(max_delay=0.25)
    outage.failed(5.0)
    assert outage.retry_delay == 0.25 and outage.retry_at == 5.25


def test_an_answer_ends_the_outage_says_how_long_it_lasted_and_the_next_one_starts_afresh() -> None:
    outage = EngineOutage(max_delay=30.0)
    assert outage.answered(1.0) is None, "no outage, nothing to report"
    outage.failed(10.0)
    outage.failed(11.0)
    assert outage.answered(12.3456) == Recovery(outage_s=2.346, failed_checks=2)
    assert (outage.since, outage.failed_checks, outage.retry_delay, outage.retry_at) == (None, 0, 0.0, None)
    assert outage.answered(13.0) is None
    outage.failed(20.0)
    assert outage.retry_delay == 1.0 and outage.failed_checks == 1
