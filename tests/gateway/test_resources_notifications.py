"""Hosts hear about stacks: list changes, state changes driven by Engine events, and log messages.

The 2026-07-28 way (``subscriptions/listen``) and the handshake-era way (``resources/subscribe``,
``logging/setLevel``, notifications on the session) are both exercised against a real engine,
with a :class:`StackWatcher` following its events as the entry point runs it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.subscriptions import ResourcesListChanged, ResourceUpdated
from mcp_types import LoggingMessageNotificationParams, ServerNotification

from gateway.mcp.notify import Notifier
from gateway.mcp.resources import status_uri
from gateway.mcp.server import GatewayServer, build_server
from gateway.mcp.watch import StackWatcher
from gateway.operations import ComposeOperations
from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory, random_name
from tests.gateway.conftest import GatewayProcess

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

SIMPLE = "services:\n  app:\n    image: {image}\n    command: ['sleep', '60']\n    init: true\n"


@asynccontextmanager
async def watched(ops: ComposeOperations) -> AsyncIterator[tuple[GatewayServer, Notifier]]:
    """A server whose notifier and watcher run as ``compose-agent serve`` runs them."""
    notifier = Notifier(InMemorySubscriptionBus())
    server = build_server(ops, notifier=notifier)
    watcher = StackWatcher(ops, notifier, rescan_interval=0.2)
    gateway_logger = logging.getLogger("gateway")
    gateway_logger.addHandler(notifier.handler)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(notifier.run)
            tg.start_soon(watcher.run)
            with anyio.fail_after(10):
                while not watcher.connected.is_set():
                    await anyio.sleep(0.01)
            yield server, notifier
            tg.cancel_scope.cancel()
    finally:
        gateway_logger.removeHandler(notifier.handler)


class Inbox:
    """Server notifications a handshake-era client received, for polling under a deadline."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    async def __call__(self, message: Any) -> None:
        if isinstance(message, ServerNotification):
            self.items.append(message)

    async def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 30) -> Any:
        with anyio.fail_after(timeout):
            while True:
                for item in self.items:
                    if predicate(item):
                        return item
                await anyio.sleep(0.02)

    def logs(self) -> list[LoggingMessageNotificationParams]:
        return [n.params for n in self.items if n.method == "notifications/message"]


async def test_listeners_hear_stacks_appear_and_change_state(ops: ComposeOperations, stacks: StackFactory) -> None:
    async with watched(ops) as (server, _), Client(server) as client:
        project = random_name("s")
        async with client.listen(resources_list_changed=True, resource_subscriptions=[status_uri(project)]) as sub:
            stacks.make(SIMPLE, name=project)
            with anyio.fail_after(30):
                assert await anext(sub) == ResourcesListChanged()
            listed = {str(r.uri) for r in (await client.list_resources(cache_mode="bypass")).resources}
            assert status_uri(project) in listed

            await ops.up(project)
            with anyio.fail_after(30):
                event = await anext(sub)
                while event != ResourceUpdated(uri=status_uri(project)):
                    event = await anext(sub)


async def test_a_handshake_era_session_hears_list_changes_and_its_subscribed_state_changes(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    other = stacks.make(SIMPLE)
    inbox = Inbox()
    async with watched(ops) as (server, notifier), Client(server, mode="legacy", message_handler=inbox) as client:
        assert client.server_capabilities.resources and client.server_capabilities.resources.list_changed
        with pytest.warns(MCPDeprecationWarning):
            await client.subscribe_resource(status_uri(project))
        assert notifier.subscribed(status_uri(project))
        await ops.up(project)
        await ops.up(other)
        await inbox.wait_for(lambda n: n.method == "notifications/resources/updated")
        updated = {n.params.uri for n in inbox.items if n.method == "notifications/resources/updated"}
        assert updated == {status_uri(project)}  # not the stack it did not subscribe to

        newcomer = stacks.make(SIMPLE)
        await inbox.wait_for(lambda n: n.method == "notifications/resources/list_changed")
        listed = {str(r.uri) for r in (await client.list_resources(cache_mode="bypass")).resources}
        assert status_uri(newcomer) in listed


async def test_compose_output_reaches_the_caller_as_log_messages_at_the_level_it_asked_for(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    project = stacks.make(SIMPLE)
    inbox = Inbox()
    async with watched(ops) as (server, _), Client(server, mode="legacy", message_handler=inbox) as client:
        assert client.server_capabilities.logging is not None
        await client.call_tool("up", {"project": project})
        compose = [p for p in inbox.logs() if p.logger == "compose"]
        assert compose and all(p.level == "info" for p in compose)
        assert any(f"Container {project}-app-1" in str(p.data) for p in compose)

        with pytest.warns(MCPDeprecationWarning):
            await client.set_logging_level("warning")
        before = len(inbox.logs())
        await client.call_tool("restart", {"project": project})
        assert [p for p in inbox.logs()[before:] if p.logger == "compose"] == []


async def test_a_2026_client_gets_compose_output_only_when_its_request_opts_in(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    project = stacks.make(SIMPLE)
    heard: list[LoggingMessageNotificationParams] = []

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        heard.append(params)

    server = build_server(ops)
    async with Client(server, logging_callback=on_log) as silent:
        await silent.call_tool("up", {"project": project})
    assert heard == []
    async with Client(server, logging_callback=on_log, log_level="info") as opted_in:
        await opted_in.call_tool("restart", {"project": project})
    assert heard and {p.logger for p in heard} == {"compose"}


async def test_the_gateways_warnings_are_sent_to_handshake_era_sessions(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    broken = stacks.make("services:\n  app:\n    image: {image}\n    ports: [not-a-port]\n")
    inbox = Inbox()
    async with watched(ops) as (server, _), Client(server, mode="legacy", message_handler=inbox) as client:
        await client.call_tool("ps", {"project": broken})
        warning = await inbox.wait_for(lambda n: n.method == "notifications/message" and n.params.level == "warning")
    assert f"cannot read the services of stack {broken}" in warning.params.data
    assert warning.params.logger == "gateway.catalog"


async def test_the_served_gateway_tells_listeners_when_a_stack_appears(
    gateway: GatewayProcess, stacks: StackFactory
) -> None:
    async with httpx2.AsyncClient(headers=gateway.headers(), timeout=60) as http:
        async with Client(streamable_http_client(gateway.url, http_client=http)) as client:
            async with client.listen(resources_list_changed=True) as sub:
                stacks.make(SIMPLE)
                with anyio.fail_after(30):
                    assert await anext(sub) == ResourcesListChanged()


async def test_a_session_subscribes_only_to_the_gateways_resources(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    project = stacks.make(SIMPLE)
    async with Client(build_server(ops), mode="legacy") as client:
        with pytest.warns(MCPDeprecationWarning):
            await client.subscribe_resource(status_uri(project))
        for uri in ("file:///etc/passwd", "compose://stacks/../x/status", "compose://stacks/" + "a" * 100 + "/status"):
            with pytest.warns(MCPDeprecationWarning), pytest.raises(MCPError) as refused:
                await client.subscribe_resource(uri)
            assert "nothing to subscribe to" in str(refused.value)
