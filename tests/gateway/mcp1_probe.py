# mypy: ignore-errors
"""What a 1.x MCP Python SDK client sees of the gateway: run by tests/gateway/test_clients.py.

This file runs under a separate virtual environment with ``mcp<2`` (the client still inside most
deployed agents), never under the project's own: it imports only the 1.x SDK and the standard
library, and the project's type checking skips it (the 1.x names differ from the 2.x ones).

    python mcp1_probe.py http|sse URL TOKEN PROJECT

It initializes, lists the tools, calls ``ps`` on PROJECT, calls ``ps`` on a stack that does not
exist, and prints one JSON object with what it saw.
"""

import asyncio
import json
import sys
from importlib.metadata import version

from mcp import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamablehttp_client


def _text(result):
    return " ".join(getattr(block, "text", "") for block in result.content)


async def probe(transport: str, url: str, token: str, project: str) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    if transport == "http":
        opened = streamablehttp_client(url, headers=headers)
    else:
        opened = sse_client(url, headers=headers)
    async with opened as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            tools = await session.list_tools()
            # 1.x validates a successful result's structuredContent against the tool's output schema.
            ps = await session.call_tool("ps", {"project": project})
            missing = await session.call_tool("ps", {"project": "no-such-stack"})
    return {
        "sdk": version("mcp"),
        "protocol_version": init.protocolVersion,
        "server": init.serverInfo.name,
        "tools": sorted(tool.name for tool in tools.tools),
        "ps": {"is_error": ps.isError, "structured": ps.structuredContent, "text": _text(ps)},
        "error": {
            "is_error": missing.isError,
            "structured": missing.structuredContent,
            "text": _text(missing),
            "meta": missing.meta,
        },
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(probe(*sys.argv[1:5]))))
