"""Getting past an approval, attempted: guessed ids, replays, racing retries, a changed stack, time, a restart.

Real gateway processes and the real engine. People decide through the panel's token naming them, as
the panel does (their own OAuth tokens are exercised in test_approvals_e2e.py).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest
from mcp.types import CallToolResult

from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory
from tests.gateway.approvals_fixtures import (
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
from tests.gateway.oauth_fixtures import OAuthGateway, audit_lines, start_oauth_gateway
from tests.polling import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

DECIDER = {"bob": ["compose:approve"]}


async def call(oauth: OAuthGateway, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    """One call of the agent's, on a session of its own."""
    async with agent(oauth.url, oauth.gw.agent_token) as me:
        return await me.call_tool(tool, arguments)


async def decide(
    oauth: OAuthGateway, approval: str, *, decision: str = "approve", person: str = "bob"
) -> CallToolResult:
    """``person`` decides through the panel's token, as the status panel does for whoever is logged in."""
    async with agent(oauth.url, oauth.gw.panel_token) as panel:
        return await panel.call_tool(decision, {"id": approval}, meta=claim(person))


async def test_guessed_ids_reach_nothing(
    tmp_path: Path, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    oauth = served(tmp_path, stacks, {"approve": ["up"]}, people=DECIDER)
    try:
        real = approval_of(await call(oauth, "up", {"project": site}))
        for guess in [secrets.token_hex(16) for _ in range(5)]:
            retried = await call(oauth, "up", {"project": site, "approval": guess})
            assert kind(retried) == "policy_violation" and f"no approval {guess} was asked for" in text_of(retried)
            approved = await decide(oauth, guess)
            assert kind(approved) == "policy_violation" and f"there is no approval {guess}" in text_of(approved)
        for malformed in ("../../approvals.json", real.upper(), real + "0", ""):
            assert kind(await call(oauth, "up", {"project": site, "approval": malformed})) == "invalid_input"
            assert kind(await decide(oauth, malformed)) == "invalid_input"
        assert containers(docker_client, site) == {}
    finally:
        stop_process(oauth.gw.process)


async def test_an_approval_is_not_replayed_on_another_stack_or_with_other_arguments(
    tmp_path: Path, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    other = stacks.make(WEB_WORKER, files=STACK_FILES)
    oauth = served(tmp_path, stacks, {"approve": ["down"]}, people=DECIDER)
    try:
        for project in (site, other):
            assert not (await call(oauth, "up", {"project": project})).is_error  # up is not listed
        before = {project: containers(docker_client, project) for project in (site, other)}
        approval = approval_of(await call(oauth, "down", {"project": site}))
        assert not (await decide(oauth, approval)).is_error
        elsewhere = await call(oauth, "down", {"project": other, "approval": approval})
        harder = await call(oauth, "down", {"project": site, "volumes": True, "approval": approval})
        for replay in (elsewhere, harder):
            assert kind(replay) == "policy_violation" and "was asked for another call" in text_of(replay)
        other_tool = await call(oauth, "up", {"project": site, "approval": approval})  # up needs none: it ignores it
        assert not other_tool.is_error
        assert {project: containers(docker_client, project) for project in (site, other)} == before
        done = await call(oauth, "down", {"project": site, "approval": approval})
        assert not done.is_error, text_of(done)
        assert containers(docker_client, site) == {} and containers(docker_client, other) == before[other]
        assert docker_client.volumes.get(f"{site}_data")  # it was approved without volumes: they are kept
    finally:
        stop_process(oauth.gw.process)


async def test_two_retries_racing_for_one_approval_act_once(
    tmp_path: Path, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    oauth = served(tmp_path, stacks, {"approve": ["up"]}, people=DECIDER)
    try:
        approval = approval_of(await call(oauth, "up", {"project": site}))
        assert not (await decide(oauth, approval)).is_error
        results: list[CallToolResult] = []

        async def retry() -> None:
            results.append(await call(oauth, "up", {"project": site, "approval": approval}))

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(retry)
        ok = [r for r in results if not r.is_error]
        refused = [r for r in results if r.is_error]
        assert len(ok) == 1 and len(refused) == 3
        assert all("an approval acts once" in text_of(r) for r in refused)
        assert set(containers(docker_client, site)) == {"web", "worker"}
    finally:
        stop_process(oauth.gw.process)
    steps = [(line[0], line[1], line[3]) for line in chain(oauth.state / "audit.log", approval)]
    assert steps.count(("up", "intent", "executed")) == 1
    # The same refusal repeated is written once and then counted in a summary line of the same approval.
    lines = [line for line in audit_lines(oauth.state / "audit.log") if line.get("approval") == approval]
    refusals = [line for line in lines if line["tool"] == "up" and line.get("approval_step") == "refused"]
    assert sum(line.get("count", 1) for line in refusals) == 3


async def test_a_change_to_the_compose_file_after_the_approval_voids_it(
    tmp_path: Path, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    oauth = served(tmp_path, stacks, {"approve": ["up"]}, people=DECIDER)
    try:
        approval = approval_of(await call(oauth, "up", {"project": site}))
        assert not (await decide(oauth, approval)).is_error
        compose = stacks.root / site / "compose.yaml"
        # What the person approved is not what would run now: a worker that does something else.
        compose.write_text(compose.read_text().replace("echo tick", "echo tock"))
        voided = await call(oauth, "up", {"project": site, "approval": approval})
        assert kind(voided) == "policy_violation" and "so the approval is void" in text_of(voided)
        assert containers(docker_client, site) == {}
        still = await call(oauth, "up", {"project": site, "approval": approval})
        assert "is void" in text_of(still) and containers(docker_client, site) == {}
        # Asking again plans the file as it is now, for a person to approve afresh.
        assert approval_of(await call(oauth, "up", {"project": site})) != approval
    finally:
        stop_process(oauth.gw.process)


async def test_a_rejected_approval_is_refused_and_an_expired_one_too(
    tmp_path: Path, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    oauth = served(tmp_path, stacks, {"approve": ["up", "down"], "approval_ttl": 2}, people=DECIDER)
    try:
        rejected = approval_of(await call(oauth, "up", {"project": site}))
        said_no = await decide(oauth, rejected, decision="reject")
        assert (said_no.structured_content or {})["status"] == "rejected"
        refused = await call(oauth, "up", {"project": site, "approval": rejected})
        assert kind(refused) == "policy_violation" and "was rejected by bob" in text_of(refused)
        assert "was rejected" in text_of(await decide(oauth, rejected))  # and stays rejected

        expiring = approval_of(await call(oauth, "down", {"project": site}))

        async def expired() -> bool:
            async with agent(oauth.url, oauth.gw.agent_token) as me:
                read = await me.read_resource(f"compose://approvals/{expiring}")
            return '"status": "expired"' in read.contents[0].text  # type: ignore[union-attr]

        await eventually(expired, timeout=20, interval=0.2, what="the request expiring after its 2 s")
        late = await decide(oauth, expiring)
        assert kind(late) == "policy_violation" and f"approval {expiring} expired at" in text_of(late)
        retried = await call(oauth, "down", {"project": site, "approval": expiring})
        assert kind(retried) == "policy_violation" and "expired at" in text_of(retried)
        assert containers(docker_client, site) == {}
    finally:
        stop_process(oauth.gw.process)


async def test_an_approval_survives_a_restart_of_the_gateway(
    tmp_path: Path, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    first = served(tmp_path, stacks, {"approve": ["up"]}, people=DECIDER)
    try:
        approval = approval_of(await call(first, "up", {"project": site}))
    finally:
        stop_process(first.gw.process)
    config = tmp_path / "config.json"  # written by served(); the same for the second process
    # A new process on the same state folder, with new tokens: the identities are what an approval is bound to.
    second = start_oauth_gateway(tmp_path, stacks.root, state=first.state, env={"CONFIG_PATH": str(config)})
    try:
        assert second.gw.agent_token != first.gw.agent_token
        assert not (await decide(second, approval)).is_error
        done = await call(second, "up", {"project": site, "approval": approval})
        assert not done.is_error, text_of(done)
        assert set(containers(docker_client, site)) == {"web", "worker"}
    finally:
        stop_process(second.gw.process)
    assert [line[3] for line in chain(first.state / "audit.log", approval)] == [
        "requested",
        "approved",
        "approved",
        "executed",
        "executed",
    ]
