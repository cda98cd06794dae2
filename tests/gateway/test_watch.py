"""The stack watcher's hold on the Engine's event stream (opened on start, released on close), and the one
freshness call it makes for each change it hears of."""

from __future__ import annotations

import anyio
import docker
import pytest
from mcp.server.subscriptions import InMemorySubscriptionBus

from gateway.engine.containers import PROJECT_LABEL
from gateway.mcp.notify import Notifier
from gateway.mcp.watch import StackWatcher
from gateway.operations import ComposeOperations
from tests.conftest import StackFactory

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


async def test_the_watcher_clears_what_is_kept_about_a_stack_through_the_one_freshness_call(
    ops: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    told: list[tuple[str, str | None]] = []
    real = ops.catalog.stack_changed

    def stack_changed(project: str, *, container: str | None = None, action: str | None = None) -> None:
        told.append((project, action))
        real(project, container=container, action=action)

    monkeypatch.setattr(ops.catalog, "stack_changed", stack_changed)
    name = stacks.make("services:\n  a:\n    image: {image}\n    init: true\n    command: ['sleep', '3600']\n")
    await ops.ps(name)  # the guard keeps its verdict, trusted for a while
    watcher = StackWatcher(ops, Notifier(InMemorySubscriptionBus()), rescan_interval=0.1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(watcher.run)
        with anyio.fail_after(10):
            while not watcher.connected.is_set():
                await anyio.sleep(0.01)
        # An engine event of the project (someone else's container of it), and a folder that appears.
        container = docker_client.containers.create(stacks.image, ["true"], labels={PROJECT_LABEL: name})
        newcomer = stacks.make("services: {}\n")
        try:
            with anyio.fail_after(20):
                while not ((name, "create") in told and (newcomer, None) in told):
                    await anyio.sleep(0.02)
        finally:
            container.remove(force=True)
            watcher.close()
            tg.cancel_scope.cancel()
    # Nothing kept about the stack is trusted any more: its verdict is checked again before its next use.
    assert ops.catalog.guard.trusted(name) is None
