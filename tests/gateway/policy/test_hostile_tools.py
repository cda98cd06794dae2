"""The hostile corpus through every tool, token and mode of a served gateway: nothing created, read or run.

Every case of ``hostile/`` is written into one stacks dir, served by one gateway and one
``--read-only`` gateway (issue 20: "each refused for up, config, plan and deploy, by both tokens and
in --read-only"). Each case is then called with ``up``, ``config``, ``plan`` and ``deploy`` (its own
compose file sent back as the new one) by the agent's and the panel's token, and with ``config`` and
``plan`` on the read-only gateway (which offers no other), a few calls at a time. Every answer must
refuse (an error, or a plan whose policy refuses and which planned nothing: no hash, no dry run),
none may quote a file outside the folder, none may be an internal error, and afterwards nothing of
any case exists on the engine, no marker was written (a provider writes ``PWNED``, a hook or a
healthcheck ``RAN``), no image was built or replaced, and no write outcome in the audit is ``ok``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import docker
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from gateway.engine.containers import PROJECT_LABEL
from tests.conftest import StackFactory
from tests.gateway.conftest import GatewayProcess, start_gateway, stop_process
from tests.gateway.policy.harness import cases, materialise
from tests.gateway.policy_cases import OUTSIDE_MARKER
from tests.gateway.test_policy_engine import footprint

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

SELF_PROJECT = "compose-agent"
# Calls in flight at once: each refused call past the reader costs one Compose run on 2 shared cores.
PARALLEL = 4


@asynccontextmanager
async def session(gateway: GatewayProcess, token: str) -> AsyncIterator[ClientSession]:
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx2.AsyncClient(headers=gateway.headers(token), timeout=300))
        read, write, *_ = await stack.enter_async_context(streamable_http_client(gateway.url, http_client=http))
        client = await stack.enter_async_context(ClientSession(read, write))
        await client.initialize()
        yield client


def _text(result: CallToolResult) -> str:
    parts = [getattr(block, "text", "") for block in result.content]
    return "\n".join(parts) + json.dumps(result.structured_content or {})


def _refused(tool: str, result: CallToolResult) -> str | None:
    """Why ``result`` is not a refusal that ran nothing; None when it is one."""
    text = _text(result)
    if OUTSIDE_MARKER in text:
        return "quotes a file outside the folder"
    if "Error executing tool" in text or "internal error" in text.lower():
        return f"an internal error: {text[:300]}"
    if result.is_error:
        return None
    content = result.structured_content or {}
    if tool == "plan" and (content.get("policy") or {}).get("allowed") is False and content.get("actions") == []:
        return None
    return f"not refused: {text[:300]}"


async def test_every_hostile_case_is_refused_by_every_tool_token_and_mode_and_nothing_runs(
    stacks: StackFactory, outside: Path, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    corpus = cases()
    projects: dict[str, Path] = {}
    volumes: list[str] = []
    for case in corpus:
        stack, _ = materialise(case, stacks.root, outside, stacks.image)
        assert stack.folder is not None
        projects[case["id"]] = stack.folder
        stacks.track(stack.name)
        # Ownership by the engine's label, for real: the resource exists and another project owns it.
        for key, owner in (case.get("owners") or {}).items():
            kind, _, resource = key.replace("{stack}", stack.name).partition(":")
            if kind == "volume":
                docker_client.volumes.create(resource, labels={PROJECT_LABEL: owner})
                volumes.append(resource)
    image_before = docker_client.images.get(stacks.image).id
    env = {"COMPOSE_AGENT_SELF_PROJECT": SELF_PROJECT}
    # Refusals from a kept verdict answer in a few milliseconds, so four calls in flight can outrun the
    # default 20 calls a second per token: the rate limit is not what this test is about.
    unlimited = ("--token-rate", "100000")
    served = start_gateway(tmp_path, stacks.root, *unlimited, env=env)
    read_only = start_gateway(tmp_path, stacks.root, "--read-only", *unlimited, env=env)
    failures: list[str] = []
    try:
        async with (
            session(served, served.agent_token) as agent,
            session(served, served.panel_token) as panel,
            session(read_only, read_only.agent_token) as ro_agent,
            session(read_only, read_only.panel_token) as ro_panel,
        ):
            limiter = anyio.CapacityLimiter(PARALLEL)

            async def call(who: str, client: ClientSession, tool: str, case: str, extra: dict[str, Any]) -> None:
                async with limiter:
                    result = await client.call_tool(tool, {"project": projects[case].name, **extra})
                why = _refused(tool, result)
                if why is not None:
                    failures.append(f"{case}: {tool} by {who}: {why}")

            async with anyio.create_task_group() as tg:
                for case in (c["id"] for c in corpus):
                    sent = {"compose_yaml": (projects[case] / "compose.yaml").read_text()}
                    for who, client in (("agent", agent), ("panel", panel)):
                        for tool, extra in (("up", {}), ("config", {}), ("plan", {}), ("deploy", sent)):
                            tg.start_soon(call, who, client, tool, case, extra)
                    for who, client in (("read-only agent", ro_agent), ("read-only panel", ro_panel)):
                        for tool in ("config", "plan", "up", "deploy"):
                            tg.start_soon(call, who, client, tool, case, sent if tool == "deploy" else {})
            # The listing goes on for everyone, hostile folders and all.
            for client in (agent, panel, ro_agent):
                listed = await client.call_tool("list_stacks", {})
                assert not listed.is_error, _text(listed)
                names = {entry["name"] for entry in (listed.structured_content or {})["stacks"]}
                assert {folder.name for folder in projects.values()} <= names
    finally:
        stop_process(served.process)
        stop_process(read_only.process)
        for volume in volumes:
            docker_client.volumes.get(volume).remove(force=True)
    assert failures == [], "\n".join(sorted(failures))
    for case_id, folder in projects.items():
        left = footprint(docker_client, folder.name)
        left["volumes"] = [v for v in left["volumes"] if v not in volumes]
        assert left == {"containers": [], "networks": [], "volumes": [], "images": []}, (case_id, left)
        assert not (folder / "PWNED").exists() and not (folder / "RAN").exists(), case_id
    assert docker_client.images.get(stacks.image).id == image_before
    assert not [i for i in docker_client.images.list() if any(t.startswith("othershop") for t in i.tags)]
    outcomes = [json.loads(line) for line in served.audit.read_text().splitlines()]
    written = [r for r in outcomes if r.get("phase") == "outcome" and r["tool"] in ("up", "deploy")]
    # Past the audit's room for distinct refusals in a minute, the rest are counted in summary lines
    # (written at the latest when the gateway stops): every refusal is accounted for, one way or the other.
    summarised = sum(r["count"] for r in outcomes if r.get("phase") == "summary" and r["tool"] in ("up", "deploy"))
    assert len(written) + summarised == 4 * len(corpus)
    assert {r["outcome"] for r in written} <= {"refused", "error"}, {r["outcome"] for r in written}
    assert "Traceback" not in served.stderr_text() + read_only.stderr_text()
