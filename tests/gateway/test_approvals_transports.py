"""Approvals on every transport and protocol revision, clients that say yes to everything, and hosts hearing of them.

- An agent on stdio, SSE, and Streamable HTTP with the 2025-11-25 handshake and the 2026-07-28
  stateless revision: its call waits, a person approves at the HTTP gateway, its retry acts once.
  The stdio gateway is a process of its own: it shares the approvals through the state folder.
- A client that accepts every elicitation is never asked, and cannot get past an approval.
- Hosts hear when an approval changes, also when another gateway process decided it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import anyio
import docker
import pytest
from mcp import Client, ClientSession, StdioServerParameters
from mcp.client.context import ClientRequestContext
from mcp.client.sse import sse_client
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.shared.subscriptions import ResourceUpdated
from mcp.types import CallToolResult, ElicitRequestParams, ElicitResult

from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory
from tests.gateway.approvals_fixtures import (
    Mode,
    agent,
    approval_of,
    chain,
    claim,
    containers,
    kind,
    served,
    text_of,
)
from tests.gateway.conftest import stop_process
from tests.gateway.oauth_fixtures import OAuthGateway, start_oauth_gateway
from tests.gateway.test_resources_notifications import Inbox

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

DECIDER = {"bob": ["compose:approve"]}


class Caller(Protocol):
    async def call_tool(self, name: str, arguments: dict[str, Any]) -> CallToolResult: ...


@asynccontextmanager
async def agent_on(transport: str, oauth: OAuthGateway, stacks: StackFactory) -> AsyncIterator[Caller]:
    """The agent, on one transport, against the served gateway (or, on stdio, a process of its own)."""
    if transport == "stdio":
        env = {
            **os.environ,
            "COMPOSE_AGENT_STATE_DIR": str(oauth.state),
            "CONFIG_PATH": str(oauth.state.parent / "config.json"),
        }
        args = ["-m", "gateway", "serve", "--transport", "stdio", "--stacks-dir", str(stacks.root)]
        async with Client(StdioServerParameters(command=sys.executable, args=args, env=env)) as client:
            yield client
    elif transport == "sse":
        headers = {"Authorization": f"Bearer {oauth.gw.agent_token}"}
        async with sse_client(f"{oauth.public}/sse", headers=headers) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session
    else:
        mode: Mode = "legacy" if transport == "http-2025-11-25" else "auto"
        async with agent(oauth.url, oauth.gw.agent_token, mode=mode) as client:
            yield client


@pytest.mark.parametrize("transport", ["stdio", "sse", "http-2025-11-25", "http-2026-07-28"])
async def test_the_agent_waits_and_acts_once_approved_on_every_transport(
    transport: str, tmp_path: Path, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    oauth = served(tmp_path, stacks, {"approve": ["restart"]}, people=DECIDER)
    try:
        async with agent_on(transport, oauth, stacks) as me:
            assert not (await me.call_tool("up", {"project": site})).is_error  # up is not listed
            started = docker_client.containers.get(f"{site}-worker-1").attrs["State"]["StartedAt"]
            wanted = {"project": site, "services": ["worker"]}
            approval = approval_of(await me.call_tool("restart", wanted))
            assert approval_of(await me.call_tool("restart", {**wanted, "approval": approval})) == approval
            async with agent(oauth.url, oauth.gw.panel_token) as panel:
                decided = await panel.call_tool("approve", {"id": approval}, meta=claim("bob"))
                assert not decided.is_error, text_of(decided)
            assert docker_client.containers.get(f"{site}-worker-1").attrs["State"]["StartedAt"] == started
            done = await me.call_tool("restart", {**wanted, "approval": approval})
            assert not done.is_error, text_of(done)
            assert docker_client.containers.get(f"{site}-worker-1").attrs["State"]["StartedAt"] != started
            again = await me.call_tool("restart", {**wanted, "approval": approval})
            assert kind(again) == "policy_violation" and "acts once" in text_of(again)
    finally:
        stop_process(oauth.gw.process)
    caller = "local" if transport == "stdio" else "compose_agent_token"
    steps = [(line[0], line[3], line[4]) for line in chain(oauth.state / "audit.log", approval)]
    assert steps == [
        ("restart", "requested", caller),
        ("restart", "waiting", caller),
        ("approve", "approved", "status_panel_token"),
        ("approve", "approved", "status_panel_token"),
        ("restart", "executed", caller),
        ("restart", "executed", caller),
        ("restart", "refused", caller),
    ]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_client_that_accepts_every_elicitation_cannot_get_past_an_approval(
    mode: Mode, tmp_path: Path, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    # down is both confirmed and approved: the approval, which no client answers, is what counts.
    oauth = served(tmp_path, stacks, {"confirm": ["down", "up"], "approve": ["down"]}, people=DECIDER)
    asked: list[str] = []

    async def yes_to_everything(ctx: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"approve": True})

    try:
        async with agent(oauth.url, oauth.gw.agent_token, mode=mode, elicitation_callback=yes_to_everything) as me:
            assert not (await me.call_tool("up", {"project": site})).is_error  # confirmed by "the person": it acts
            assert len(asked) == 1  # the client does answer elicitations
            before = containers(docker_client, site)
            approval = approval_of(await me.call_tool("down", {"project": site}))
            with_token = await me.call_tool("down", {"project": site, "confirm": "whatever-it-likes"})
            assert approval_of(with_token) == approval and "already waits as approval" in text_of(with_token)
            assert approval_of(await me.call_tool("down", {"project": site, "approval": approval})) == approval
            assert len(asked) == 1  # never asked about down
            assert containers(docker_client, site) == before
    finally:
        stop_process(oauth.gw.process)


async def test_hosts_hear_of_an_approval_decided_by_another_gateway_process(
    tmp_path: Path, stacks: StackFactory
) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    here = served(tmp_path, stacks, {"approve": ["up"]}, people=DECIDER)
    config = tmp_path / "config.json"
    there = start_oauth_gateway(tmp_path, stacks.root, state=here.state, env={"CONFIG_PATH": str(config)})
    inbox = Inbox()
    try:
        async with (
            agent(here.url, here.gw.agent_token, mode="legacy", message_handler=inbox) as old,
            agent(here.url, here.gw.agent_token, mode="auto") as new,
        ):
            approval = approval_of(await old.call_tool("up", {"project": site}))
            uri = f"compose://approvals/{approval}"
            with pytest.warns(MCPDeprecationWarning):
                await old.subscribe_resource(uri)
            async with new.listen(resource_subscriptions=[uri]) as heard:
                async with agent(there.url, there.gw.panel_token) as panel:
                    assert not (await panel.call_tool("approve", {"id": approval}, meta=claim("bob"))).is_error
                with anyio.fail_after(20):
                    assert await anext(heard) == ResourceUpdated(uri=uri)
            await inbox.wait_for(lambda n: n.method == "notifications/resources/updated" and str(n.params.uri) == uri)
            listed = {str(r.uri) for r in (await old.list_resources()).resources}
            assert uri not in listed and "compose://approvals" in listed  # only pending ones are listed
    finally:
        stop_process(there.gw.process)
        stop_process(here.gw.process)
