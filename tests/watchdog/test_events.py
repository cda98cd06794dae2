"""The events follower's own behaviour with a fake engine: how it reports an outage."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
import requests

from watchdog.events import EventStream


class FlakyApi:
    """``events`` fails ``failures`` times, then gives one event and asks the follower to stop."""

    def __init__(self, failures: int, follower: list[EventStream]) -> None:
        self.failures = failures
        self.calls = 0
        self.follower = follower

    def events(self, **_: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise requests.exceptions.ConnectionError("engine down")
        follower = self.follower[0]

        def stream() -> Any:
            yield {"status": "start", "id": "x", "timeNano": time.time_ns() + 1_000_000_000}
            follower.close()

        return stream()


class FakeClient:
    def __init__(self, api: FlakyApi) -> None:
        self.api = api


def test_an_outage_is_one_warning_and_the_recovery_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    holder: list[EventStream] = []
    api = FlakyApi(failures=5, follower=holder)
    follower = EventStream(FakeClient(api), "target", reconnect_delay=0.0)
    holder.append(follower)
    seen: list[dict[str, Any]] = []
    with caplog.at_level(logging.DEBUG, logger="watchdog.events"):
        thread = threading.Thread(target=follower.follow, args=(seen.append,))
        thread.start()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert api.calls == 6 and len(seen) == 1
    unavailable = [r for r in caplog.records if "events_unavailable" in r.getMessage()]
    assert [r.levelno for r in unavailable] == [logging.WARNING] + [logging.DEBUG] * 4
    assert [r.levelno for r in caplog.records if "events_recovered" in r.getMessage()] == [logging.INFO]
