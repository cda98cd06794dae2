"""Handshake-era sessions as the notifier knows them: one per connection, forgotten once it ends."""

from __future__ import annotations

import pytest
from mcp import Client
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.exceptions import MCPDeprecationWarning

from gateway.mcp.notify import Notifier
from gateway.mcp.resources import status_uri
from gateway.mcp.server import build_server
from gateway.operations import ComposeOperations

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_each_connection_is_one_session_that_is_forgotten_once_it_ends(ops: ComposeOperations) -> None:
    # Every session counts as quiet at once, so each sweep pings them all.
    notifier = Notifier(InMemorySubscriptionBus(), sweep_interval=0)
    server = build_server(ops, notifier=notifier)
    async with Client(server, mode="legacy") as first:
        with pytest.warns(MCPDeprecationWarning):
            await first.set_logging_level("warning")
        with pytest.warns(MCPDeprecationWarning):
            await first.subscribe_resource(status_uri("shop"))
        await first.list_tools()
        assert notifier.sessions == 1  # many requests, one connection
        async with Client(server, mode="legacy") as second:
            await second.list_tools()
            assert notifier.sessions == 2
            await notifier.sweep()  # both answer the ping
            assert notifier.sessions == 2
        await notifier.sweep()
        assert notifier.sessions == 1  # the second's connection is closed
        assert notifier.subscribed(status_uri("shop"))
    await notifier.sweep()
    assert notifier.sessions == 0
    assert not notifier.subscribed(status_uri("shop"))


async def test_a_2026_session_is_not_kept_by_the_notifier(ops: ComposeOperations) -> None:
    notifier = Notifier(InMemorySubscriptionBus())
    async with Client(build_server(ops, notifier=notifier)) as client:
        await client.list_tools()
        assert notifier.sessions == 0  # it hears changes on its own subscriptions/listen stream
