"""Fixtures for the watchdog tests: throwaway busybox targets and a watchdog running in a task group."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import docker.errors
import pytest

from tests.conftest import random_name
from tests.polling import eventually_in_thread
from watchdog import ComposeAgentWatchdog, WatchdogConfig

# A target that runs until stopped and exits at once on SIGTERM.
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
GLIBC_LINE = (
    "/usr/local/bin/python3: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.38' not found "
    "(required by /usr/local/bin/python3)"
)
# Short intervals keep the suite fast; the tests raise what they need.
FAST: dict[str, Any] = {
    "check_interval_secs": 0.5,
    "initial_delay_secs": 0.2,
    "restart_backoff_multiplier": 1.5,
    "restart_stop_timeout_secs": 1,
    "events_reconnect_delay_secs": 0.1,
}


class Targets:
    """Creates busybox containers with random names and removes every one of them afterwards."""

    def __init__(self, client: Any, image: str) -> None:
        self.client = client
        self.image = image
        self.names: list[str] = []

    def name(self) -> str:
        """A fresh name, removed at teardown even if the test only creates it later (or never)."""
        name = random_name("wd")
        self.names.append(name)
        return name

    def run(self, command: list[str] | None = None, name: str | None = None, **kwargs: Any) -> Any:
        """Start a target (a sleeper by default); returns the docker-py container."""
        return self.client.containers.run(
            self.image, command or SLEEPER, name=name or self.name(), detach=True, **kwargs
        )

    def started_at(self, name: str) -> str:
        return str(self.client.api.inspect_container(name)["State"]["StartedAt"])

    def running(self, name: str) -> bool:
        return bool(self.client.api.inspect_container(name)["State"]["Running"])

    def cleanup(self) -> None:
        for name in self.names:
            try:
                self.client.api.remove_container(name, force=True, v=True)
            except docker.errors.NotFound:
                pass


@pytest.fixture
def targets(docker_client: Any, busybox_image: str) -> Iterator[Targets]:
    factory = Targets(docker_client, busybox_image)
    yield factory
    factory.cleanup()


def config(target: str, **overrides: Any) -> WatchdogConfig:
    return WatchdogConfig(target_container=target, **{**FAST, **overrides})


@asynccontextmanager
async def supervising(watchdog: ComposeAgentWatchdog) -> AsyncIterator[ComposeAgentWatchdog]:
    """Run ``watchdog`` for the body of the block, then cancel it as SIGTERM would."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(watchdog.run)
        with anyio.fail_after(10):
            await watchdog.wait_started()
        try:
            yield watchdog
        finally:
            tg.cancel_scope.cancel()


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (it may call docker-py: it runs in a thread) until true, or fail."""
    await eventually_in_thread(predicate, timeout=timeout, interval=0.02, what=what)
