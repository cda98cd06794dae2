"""A scripted agent meets a person's approval: real gateway processes, real people, the real engine.

The agent calls, retries too early, tries to approve its own call; a person approves with their own
OAuth token (the SDK's OAuth client, a person scripted at the login and consent forms); the retry
acts once; the audit holds the chain line by line. The person who asked cannot approve through a
second client, and the panel's token approves only for a person who holds compose:approve.
"""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from gateway.approvals.records import ApprovalInfo
from gateway.errors import IDEMPOTENCY_META_KEY
from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory
from tests.gateway.approvals_fixtures import (
    PANEL_URL,
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
from tests.gateway.oauth_fixtures import PASSWORD, connect
from tests.gateway.oauth_person import MemoryStorage, ScriptedPerson

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_the_agents_call_waits_until_a_person_approves_it_then_acts_once_and_the_audit_holds_the_chain(
    tmp_path: Path, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    people = {"bob": ["compose:approve"], "carol": ["compose:read"]}
    oauth = served(tmp_path, stacks, {"approve": ["up", "down"]}, people=people)
    try:
        async with agent(oauth.url, oauth.gw.agent_token) as me:
            first = await me.call_tool("up", {"project": site})
            approval = approval_of(first)
            plan = text_of(first)
            assert "web: create, it has no container yet" in plan and "worker: create" in plan
            assert f"in the status panel at {PANEL_URL}/approvals/{approval}" in plan
            assert containers(docker_client, site) == {}  # nothing ran
            early = await me.call_tool("up", {"project": site, "approval": approval})
            assert approval_of(early) == approval and "still waits for a person" in text_of(early)
            itself = await me.call_tool("approve", {"id": approval})
            assert kind(itself) == "policy_violation" and "names none of the people" in text_of(itself)
            listed = {str(r.uri) for r in (await me.list_resources()).resources}
            assert f"compose://approvals/{approval}" in listed
        async with agent(oauth.url, oauth.gw.panel_token) as panel_alone:
            refused = await panel_alone.call_tool("approve", {"id": approval})  # the panel's token names nobody
            assert kind(refused) == "policy_violation" and "names none of the people" in text_of(refused)
        async with connect(oauth.url, ScriptedPerson("carol", PASSWORD)) as carol:
            looking = await carol.call_tool("approve", {"id": approval})
            assert kind(looking) == "insufficient_scope" and "compose:approve" in text_of(looking)
        assert containers(docker_client, site) == {}
        async with connect(oauth.url, ScriptedPerson("bob", PASSWORD)) as bob:
            approved = await bob.call_tool("approve", {"id": approval})
            assert not approved.is_error, text_of(approved)
            info = ApprovalInfo.model_validate(approved.structured_content)
            assert (info.status, info.decided_by, info.tool, info.project) == ("approved", "bob", "up", site)
            assert info.caller == "compose_agent_token" and info.url == f"{PANEL_URL}/approvals/{approval}"
            twice = await bob.call_tool("approve", {"id": approval})
            assert kind(twice) == "policy_violation" and "already approved by bob" in text_of(twice)
        assert containers(docker_client, site) == {}  # approving runs nothing either
        async with agent(oauth.url, oauth.gw.agent_token) as me:
            done = await me.call_tool("up", {"project": site, "approval": approval})
            assert not done.is_error, text_of(done)
            running = containers(docker_client, site)
            assert set(running) == {"web", "worker"}
            again = await me.call_tool("up", {"project": site, "approval": approval})
            assert kind(again) == "policy_violation" and "an approval acts once" in text_of(again)
            assert containers(docker_client, site) == running
            used = ApprovalInfo.model_validate_json(
                (await me.read_resource(f"compose://approvals/{approval}")).contents[0].text  # type: ignore[union-attr]
            )
            assert used.status == "used" and used.used_at is not None
    finally:
        stop_process(oauth.gw.process)
    bob_client = next(line for line in chain(oauth.state / "audit.log", approval) if line[5] == "bob")[4]
    carol_client = next(line for line in chain(oauth.state / "audit.log", approval) if line[5] == "carol")[4]
    assert bob_client.startswith("oauth:") and carol_client.startswith("oauth:")
    agent_token, panel_token = "compose_agent_token", "status_panel_token"
    assert chain(oauth.state / "audit.log", approval) == [
        ("up", "outcome", "refused", "requested", agent_token, None),
        ("up", "outcome", "refused", "waiting", agent_token, None),
        ("approve", "outcome", "refused", "refused", agent_token, None),
        ("approve", "outcome", "refused", "refused", panel_token, None),
        ("approve", "outcome", "refused", "refused", carol_client, "carol"),
        ("approve", "intent", None, "approved", bob_client, "bob"),
        ("approve", "outcome", "ok", "approved", bob_client, "bob"),
        ("approve", "outcome", "refused", "refused", bob_client, "bob"),
        ("up", "intent", None, "executed", agent_token, None),
        ("up", "outcome", "ok", "executed", agent_token, None),
        ("up", "outcome", "refused", "refused", agent_token, None),
    ]


async def test_the_person_who_asked_cannot_approve_through_a_second_client_and_another_person_can(
    tmp_path: Path, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    # alice may change the stack and approve changes to it: still not her own.
    people = {"alice": [f"compose:write:{site}", "compose:approve"], "bob": [f"compose:approve:{site}"]}
    oauth = served(tmp_path, stacks, {"stacks": {site: {"approve": ["up"]}}}, people=people)
    alice_first = MemoryStorage()
    try:
        async with connect(oauth.url, ScriptedPerson("alice", PASSWORD), storage=alice_first) as alice:
            approval = approval_of(await alice.call_tool("up", {"project": site}))
            own = await alice.call_tool("approve", {"id": approval})
            assert kind(own) == "policy_violation" and "alice asked for this change" in text_of(own)
        alice_second = MemoryStorage()
        async with connect(oauth.url, ScriptedPerson("alice", PASSWORD), storage=alice_second) as alice_again:
            assert alice_second.client_info and alice_first.client_info
            assert alice_second.client_info.client_id != alice_first.client_info.client_id
            also_own = await alice_again.call_tool("approve", {"id": approval})
            assert kind(also_own) == "policy_violation" and "alice asked for this change" in text_of(also_own)
            # Her second client is another caller: the approval is not its to spend either.
            not_its = await alice_again.call_tool("up", {"project": site, "approval": approval})
            assert "no approval" in text_of(not_its) and containers(docker_client, site) == {}
        async with agent(oauth.url, oauth.gw.panel_token) as panel:
            # The panel acting for alice is alice too.
            as_alice = await panel.call_tool("approve", {"id": approval}, meta=claim("alice"))
            assert kind(as_alice) == "policy_violation" and "alice asked for this change" in text_of(as_alice)
        async with connect(oauth.url, ScriptedPerson("bob", PASSWORD)) as bob:
            assert not (await bob.call_tool("approve", {"id": approval})).is_error
        async with connect(oauth.url, ScriptedPerson("alice", PASSWORD), storage=alice_first) as alice:
            done = await alice.call_tool("up", {"project": site, "approval": approval})
            assert not done.is_error, text_of(done)
        assert set(containers(docker_client, site)) == {"web", "worker"}
    finally:
        stop_process(oauth.gw.process)
    steps = [(line[0], line[3], line[5]) for line in chain(oauth.state / "audit.log", approval)]
    assert steps[0] == ("up", "requested", "alice")  # the person behind the caller
    assert ("approve", "approved", "bob") in steps and steps[-1] == ("up", "executed", "alice")
    assert [s for s in steps if s[0] == "approve" and s[2] == "alice"] == [("approve", "refused", "alice")] * 3


async def test_the_panel_approves_for_a_person_who_holds_compose_approve_and_for_nobody_else(
    tmp_path: Path, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    other = stacks.make(WEB_WORKER, files=STACK_FILES)
    people = {"bob": [f"compose:approve:{other}"], "dave": [f"compose:approve:{site}"]}
    oauth = served(tmp_path, stacks, {"approve": ["up"]}, people=people)
    try:
        async with agent(oauth.url, oauth.gw.agent_token) as me:
            approval = approval_of(await me.call_tool("up", {"project": site}))
        async with agent(oauth.url, oauth.gw.panel_token) as panel:
            for person, expected, words in [
                ("bob", "insufficient_scope", f"compose:approve:{site}"),  # holds it for another stack only
                ("nobody", "policy_violation", "names none of the people"),  # no such person
            ]:
                refused = await panel.call_tool("approve", {"id": approval}, meta=claim(person))
                assert kind(refused) == expected and words in text_of(refused), text_of(refused)
            approved = await panel.call_tool("approve", {"id": approval}, meta=claim("dave"))
            assert not approved.is_error, text_of(approved)
            assert (approved.structured_content or {})["decided_via"] == "status_panel_token"
        async with agent(oauth.url, oauth.gw.agent_token) as me:
            assert not (await me.call_tool("up", {"project": site, "approval": approval})).is_error
        assert set(containers(docker_client, site)) == {"web", "worker"}
    finally:
        stop_process(oauth.gw.process)
    decided = [line for line in chain(oauth.state / "audit.log", approval) if line[3] == "approved"]
    assert [(line[1], line[4], line[5]) for line in decided] == [
        ("intent", "status_panel_token", "dave"),
        ("outcome", "status_panel_token", "dave"),
    ]


async def test_the_approved_retry_may_keep_the_idempotency_key_of_the_call_that_waited(
    tmp_path: Path, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    oauth = served(tmp_path, stacks, {"approve": ["restart"]}, people={"bob": ["compose:approve"]})
    key = {"idempotency_key": "restart-" + site}
    try:
        async with agent(oauth.url, oauth.gw.agent_token) as me:
            assert not (await me.call_tool("up", {"project": site})).is_error
            before = started_at(docker_client, site)
            approval = approval_of(await me.call_tool("restart", {"project": site, **key}))
        async with connect(oauth.url, ScriptedPerson("bob", PASSWORD)) as bob:
            assert not (await bob.call_tool("approve", {"id": approval})).is_error
        async with agent(oauth.url, oauth.gw.agent_token) as me:
            ran = await me.call_tool("restart", {"project": site, "approval": approval, **key})
            after = started_at(docker_client, site)
            again = await me.call_tool("restart", {"project": site, "approval": approval, **key})
    finally:
        stop_process(oauth.gw.process)
    # Waiting for the person gave the key back: the approved call with it runs once, its repeat replays.
    assert not ran.is_error, text_of(ran)
    assert (ran.meta or {})[IDEMPOTENCY_META_KEY]["call"] == "ran"
    assert not again.is_error and (again.meta or {})[IDEMPOTENCY_META_KEY]["call"] == "replayed"
    assert set(after) == set(before) == {"web", "worker"}
    assert all(after[service] != before[service] for service in before)
    assert started_at(docker_client, site) == after


def started_at(docker_client: docker.DockerClient, project: str) -> dict[str, str]:
    listed = docker_client.containers.list(filters={"label": f"com.docker.compose.project={project}"})
    return {c.labels["com.docker.compose.service"]: c.attrs["State"]["StartedAt"] for c in listed}
