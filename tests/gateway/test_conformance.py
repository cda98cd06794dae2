"""The official MCP conformance suite against a real ``compose-agent serve`` over Streamable HTTP.

``@modelcontextprotocol/conformance`` is written by the protocol's maintainers. It has no option
for a header, so it reaches the gateway through a loopback proxy that adds the bearer token and
passes everything else (the Host and Origin headers included) through untouched.

Only the server scenarios that apply to a server without the suite's own fixtures run here: the
others call tools and resources the suite defines (``test_simple_text``, ``test://static-text``...).
"""

from __future__ import annotations

import pytest
from anyio import run_process

from tests.conftest import StackFactory
from tests.gateway.auth_proxy import auth_proxy
from tests.gateway.conftest import GatewayProcess
from tests.gateway.mcp_tools import mcp_tools_modules, node_binary

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

SCENARIOS = [
    "server-initialize",
    "ping",
    "tools-list",
    "logging-set-level",
    "completion-complete",
    "resources-list",
    "prompts-list",
    "dns-rebinding-protection",
    "server-sse-multiple-streams",
]


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_the_conformance_scenario_passes(
    scenario: str, gateway: GatewayProcess, stacks: StackFactory, tmp_path: object
) -> None:
    # A stack, so that resources/list has entries of each kind to check.
    stacks.make("services:\n  app:\n    image: {image}\n")
    suite = mcp_tools_modules() / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
    port = int(gateway.base.rsplit(":", 1)[1])
    async with auth_proxy(port, gateway.agent_token) as proxy_port:
        # "localhost": the DNS-rebinding scenario only runs against a local server's own name.
        url = f"http://localhost:{proxy_port}/mcp"
        done = await run_process(
            [node_binary(), str(suite), "server", "--url", url, "--scenario", scenario],
            check=False,
            cwd=str(tmp_path),
        )
    output = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, output[-4000:]
    assert " 0 failed" in output and "Passed: 0/" not in output, output[-4000:]
