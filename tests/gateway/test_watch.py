"""The stack watcher's hold on the Engine's event stream: opened on start, released on close."""

from __future__ import annotations

import anyio
import pytest
from mcp.server.subscriptions import InMemorySubscriptionBus

from gateway.mcp.notify import Notifier
from gateway.mcp.watch import StackWatcher
from gateway.operations import ComposeOperations

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_closing_the_watcher_ends_its_blocked_read_of_the_engine_events(ops: ComposeOperations) -> None:
    watcher = StackWatcher(ops, Notifier(InMemorySubscriptionBus()), rescan_interval=60)
    returned = anyio.Event()

    async def run() -> None:
        await watcher.run()
        returned.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(10):
            while not watcher.connected.is_set():
                await anyio.sleep(0.01)
        # The follower thread now blocks reading a quiet stream; only shutting its socket wakes it,
        # and run() returns only once that thread has.
        watcher.close()
        with anyio.fail_after(10):
            await returned.wait()
    assert not watcher.connected.is_set()
