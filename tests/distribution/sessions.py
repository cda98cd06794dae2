"""One MCP session as a client would hold it: list the tools, list the stacks, read one stack's model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import httpx2
from mcp import Client, ClientSession, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.distribution.conftest import Stacks
from tests.distribution.readme_configs import HttpTarget, StdioLaunch

__all__ = ["READ_TOOLS", "Seen", "over_http", "over_stdio"]

# What --read-only offers: the tools that change nothing.
READ_TOOLS = {"list_stacks", "ps", "logs", "config", "plan", "versions"}


class _Caller(Protocol):
    async def list_tools(self) -> Any: ...

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any: ...


@dataclass(frozen=True)
class Seen:
    """What the session saw."""

    tools: set[str]
    stacks: dict[str, dict[str, Any]]
    config_text: str

    def assert_served(self, stacks: Stacks, *, read_only: bool = False) -> None:
        """The server listed both stacks (the folder and the engine's) and ran Compose for the folder's."""
        if read_only:
            assert self.tools == READ_TOOLS
        else:
            assert READ_TOOLS | {"up", "down", "deploy", "rollback"} <= self.tools, sorted(self.tools)
        assert self.stacks[stacks.folder_stack]["external"] is False
        assert self.stacks[stacks.external]["external"] is True and self.stacks[stacks.external]["running"] == 1
        assert '"web"' in self.config_text, self.config_text[:500]


async def _exercise(caller: _Caller, stacks: Stacks) -> Seen:
    tools = {tool.name for tool in (await caller.list_tools()).tools}
    listed = await caller.call_tool("list_stacks", {})
    assert not listed.is_error, listed.content
    by_name = {stack["name"]: stack for stack in listed.structured_content["stacks"]}
    # config runs the Compose CLI: an error here says the route's configuration cannot find it.
    config = await caller.call_tool("config", {"project": stacks.folder_stack})
    assert not config.is_error, config.content
    return Seen(tools, by_name, config.content[0].text)


async def over_stdio(launch: StdioLaunch, stacks: Stacks, env: dict[str, str]) -> Seen:
    """Spawn ``launch`` as a client does (command, args and env; nothing else of ours) and hold a session."""
    params = StdioServerParameters(command=launch.command, args=launch.args, env={**env, **launch.env})
    async with Client(params) as client:
        return await _exercise(client, stacks)


async def over_http(target: HttpTarget, stacks: Stacks) -> Seen:
    async with httpx2.AsyncClient(headers=target.headers, timeout=30) as http:
        async with streamable_http_client(target.url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await _exercise(session, stacks)
