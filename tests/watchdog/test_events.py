"""The events follower's own behaviour with a fake engine: how it reports an outage."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from watchdog.events import EventStream


class OneEvent:
    """A streamed answer with one event; reading it to the end asks the follower to stop."""

    status_code = 200

    def __init__(self, follower: EventStream) -> None:
        self.follower = follower
        self.raw = self
        self.closed = False

    def iter_lines(self) -> Iterator[bytes]:
        yield json.dumps({"status": "start", "id": "x", "timeNano": time.time_ns() + 1_000_000_000}).encode()
        self.follower.close()

    def shutdown(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class FlakyApi:
    """``GET /events`` fails ``failures`` times, then gives one event and asks the follower to stop."""

    base_url = "http+docker://localhost"
    api_version = "1.45"

    def __init__(self, failures: int, follower: list[EventStream]) -> None:
        self.failures = failures
        self.calls = 0
        self.follower = follower
        self.urls: list[str] = []
        self.answers: list[OneEvent] = []

    def get(self, url: str, **_: Any) -> Any:
        self.calls += 1
        self.urls.append(url)
        if self.calls <= self.failures:
            raise requests.exceptions.ConnectionError("engine down")
        self.answers.append(OneEvent(self.follower[0]))
        return self.answers[-1]


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
    assert api.urls[-1] == "http+docker://localhost/v1.45/events"  # the client's negotiated version
    assert all(answer.closed for answer in api.answers)  # the socket is released, not left to the collector
    unavailable = [r for r in caplog.records if "events_unavailable" in r.getMessage()]
    assert [r.levelno for r in unavailable] == [logging.WARNING] + [logging.DEBUG] * 4
    assert [r.levelno for r in caplog.records if "events_recovered" in r.getMessage()] == [logging.INFO]
