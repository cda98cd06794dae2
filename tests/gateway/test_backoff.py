"""The one retry schedule of the gateway and the panel."""

from __future__ import annotations

import pytest

from gateway.backoff import Backoff


def test_delays_grow_by_the_factor_up_to_the_cap_and_start_over_after_a_reset() -> None:
    backoff = Backoff(0.25, 5.0)
    assert [backoff.next() for _ in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.failures == 7 and backoff.peek() == 5.0
    backoff.reset()
    assert backoff.failures == 0 and backoff.next() == 0.25


def test_a_schedule_that_could_never_wait_is_refused() -> None:
    for first, cap, factor in ((0.0, 1.0, 2.0), (2.0, 1.0, 2.0), (1.0, 2.0, 0.5)):
        with pytest.raises(ValueError):
            Backoff(first, cap, factor=factor)
