"""The container list's ``Status`` text, which ``ps`` reads to spare an inspect per running container.

``bench/engine_reads.py`` shows why it is worth it: building ``ps`` rows with one inspect per running
container costs about nine times the list alone on a 10-service stack. So the text must be read
right for every engine we support. Engine 20.10 (go-units v0.4.0) and Engine 29 (go-units v0.5.0)
both write it as ``container.State.String()`` does: ``"Up " + units.HumanDuration(now - StartedAt)``,
then `` (Paused)`` or `` (healthy)``/`` (unhealthy)``/`` (health: starting)``; ``"Exited (code) ... ago"``;
``"Restarting (code) ... ago"``; ``"Created"``, ``"Removal In Progress"``, ``"Dead"``.
:func:`human_duration` below is HumanDuration as both go-units versions write it.
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import docker
import pytest

from gateway.engine.blocking import run_blocking
from gateway.engine.client import Engine
from gateway.engine.containers import parse_status, uptime_upper_bound
from tests.conftest import random_name
from tests.engine29_proxy import engine29_proxy

SECOND, MINUTE, HOUR, DAY = 1.0, 60.0, 3600.0, 86400.0


def human_duration(seconds: float) -> str:
    """go-units' HumanDuration (v0.4.0 and v0.5.0 are the same), for a duration in seconds."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


@pytest.mark.parametrize(
    ("seconds", "text"),
    # go-units' own test table (duration_test.go), as a check of the reference above.
    [
        (0.45, "Less than a second"),
        (1, "1 second"),
        (47, "47 seconds"),
        (60, "About a minute"),
        (35 * MINUTE + 40, "35 minutes"),
        (HOUR + 29 * MINUTE, "About an hour"),
        (HOUR + 31 * MINUTE, "2 hours"),
        (3 * HOUR + 31 * MINUTE, "4 hours"),
        (DAY + 12 * HOUR, "36 hours"),
        (13 * DAY + 5 * HOUR, "13 days"),
        (30 * DAY, "4 weeks"),
        (30 * DAY + 14 * DAY, "6 weeks"),
        (2 * 30 * DAY, "2 months"),
        (24 * 30 * DAY, "24 months"),
        (24 * 30 * DAY + 14 * DAY, "2 years"),
        (3 * 365 * DAY + 60 * DAY, "3 years"),
    ],
)
def test_the_reference_matches_go_units_own_examples(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def _uptimes() -> list[float]:
    # Every second for 2 h (each boundary of seconds, minutes and the rounded hours), then coarser.
    points = [s + frac for s in range(0, 2 * 3600) for frac in (0.0, 0.999)]
    points += [x * 60.0 + frac for x in range(120, 60 * 24 * 800, 7) for frac in (0.0, 59.9)]
    return points


@pytest.mark.parametrize("suffix", ["", " (Paused)", " (healthy)", " (unhealthy)", " (health: starting)"])
def test_the_uptime_bound_covers_every_status_text_an_engine_writes(suffix: str) -> None:
    for seconds in _uptimes():
        status = f"Up {human_duration(seconds)}{suffix}"
        bound = uptime_upper_bound(status)
        assert bound is not None, status
        # Never below the real uptime: a restart is always noticed (its uptime is shorter than the cache's).
        assert bound >= seconds, (status, seconds, bound)
        # Never wildly above it: a restart by someone else is noticed within about one unit of the text.
        assert bound <= 2.1 * max(seconds, 1.0) + 1.0, (status, seconds, bound)


@pytest.mark.parametrize(
    ("status", "health", "exit_code"),
    [
        ("Up 5 seconds (healthy)", "healthy", None),
        ("Up About a minute (unhealthy)", "unhealthy", None),
        ("Up Less than a second (health: starting)", "starting", None),
        ("Up 3 hours (Paused)", None, None),
        ("Exited (0) 5 seconds ago", None, 0),
        ("Exited (137) About an hour ago", None, 137),
        ("Exited (-1) 2 weeks ago", None, -1),
        ("Restarting (1) 3 seconds ago", None, None),
        ("Created", None, None),
        ("Removal In Progress", None, None),
        ("Dead", None, None),
    ],
)
def test_health_and_exit_code_come_from_the_status_text(status: str, health: str | None, exit_code: int | None) -> None:
    assert parse_status(status) == (health, exit_code)


@pytest.mark.parametrize("status", ["Exited (0) 5 seconds ago", "Restarting (1) 3 seconds ago", "Created", "Dead", ""])
def test_a_container_that_is_not_up_has_no_uptime(status: str) -> None:
    assert uptime_upper_bound(status) is None


@pytest.mark.anyio
@pytest.mark.docker
async def test_a_steady_container_is_inspected_once_and_a_restarted_one_again(
    docker_client: docker.DockerClient, busybox_image: str
) -> None:
    # The proxy only counts here: in pass-through mode it is the local engine as it is.
    with engine29_proxy(os.environ.get("DOCKER_HOST")) as proxy:
        proxy.engine29 = False
        engine = Engine(proxy.docker_host)
        container = docker_client.containers.run(busybox_image, ["sleep", "600"], name=random_name("st"), detach=True)
        try:
            inspected = f"/containers/{container.id}/json"
            listed = _listed(engine, container.id)
            assert listed["Status"].startswith("Up ")
            started = engine.started_at(listed)
            assert started == docker_client.api.inspect_container(container.id)["State"]["StartedAt"]
            for _ in range(5):
                assert engine.started_at(_listed(engine, container.id)) == started
            assert proxy.count(inspected) == 1

            # A restart is noticed once the old start is older than the new text allows (the text's
            # granularity, documented on started_at): wait until it says "Up 2 seconds" at least.
            with anyio.fail_after(30):
                while (uptime_upper_bound(_listed(engine, container.id)["Status"]) or 0) < 3:
                    await anyio.sleep(0.1)
            container.restart(timeout=0)
            restarted = _listed(engine, container.id)
            assert engine.started_at(restarted) != started  # "Up Less than a second" cannot fit the old start
            assert proxy.count(inspected) == 2
        finally:
            container.remove(force=True)
            engine.close()


def _listed(engine: Engine, container_id: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = run_blocking(
        engine.request, "GET", "/containers/json", {"filters": {"id": [container_id]}}
    )
    return found[0]
