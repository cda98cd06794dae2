"""The watchdog on a Docker Engine 29, which refuses every API version below 1.44.

``tests/engine29_proxy.py`` stands in front of the local engine and emulates one behaviour of
Engine 29 only: its API version window (``/version`` reports 1.52 with a minimum of 1.44, and a
path below v1.44 gets HTTP 400 "client version ... is too old"). Everything else is the real engine.
"""

from __future__ import annotations

import anyio
import docker.constants
import pytest

from tests.engine29_proxy import Engine29Proxy
from watchdog import ComposeAgentWatchdog

from .conftest import Targets, config, supervising, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

NEWEST_KNOWN = docker.constants.DEFAULT_DOCKER_API_VERSION


async def test_the_watchdog_restarts_its_target_through_engine_29(targets: Targets, proxy: Engine29Proxy) -> None:
    target = targets.run().name
    before = targets.started_at(target)
    watchdog = ComposeAgentWatchdog(config(target), environment={"DOCKER_HOST": proxy.docker_host})
    async with supervising(watchdog):
        assert watchdog.status().state == "Healthy"
        await anyio.to_thread.run_sync(lambda: targets.client.api.kill(target))
        await wait_until(lambda: targets.running(target) and targets.started_at(target) != before, 15, "the restart")
        assert watchdog.restarts == 1
    assert proxy.refused == []
    assert proxy.versions_seen() == {NEWEST_KNOWN}
    assert proxy.count("/version") == 1  # negotiated once
    assert proxy.count(f"/containers/{target}/restart") == 1 and proxy.count("/events") >= 1


async def test_an_engine_upgraded_under_the_watchdog_is_negotiated_again(
    targets: Targets, proxy: Engine29Proxy
) -> None:
    target = targets.run().name
    proxy.engine29 = False  # the local engine as it is, at 1.41
    watchdog = ComposeAgentWatchdog(config(target), environment={"DOCKER_HOST": proxy.docker_host})
    async with supervising(watchdog):
        assert proxy.versions_seen() == {"1.41"}
        proxy.engine29 = True  # upgraded under the running watchdog, as with live-restore
        await wait_until(lambda: proxy.count("/version") == 2, 10, "a second negotiation")
        await wait_until(lambda: f"/v{NEWEST_KNOWN}/events" in {p for _, p in proxy.requests}, 10, "events again")
        before = targets.started_at(target)
        await anyio.to_thread.run_sync(lambda: targets.client.api.kill(target))
        await wait_until(lambda: targets.running(target) and targets.started_at(target) != before, 15, "the restart")
    assert proxy.count(f"/containers/{target}/restart") == 1
    assert proxy.refused and all(path.startswith("/v1.41/") for path in proxy.refused)
