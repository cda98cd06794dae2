"""Approvals through the real server object and the SDK's in-memory client, on the real engine.

In memory, the caller is stdio's local user, who is no person: the decisions here are made on the
store directly, as a unit. People deciding through their own tokens and the panel, over real
transports, are in test_approvals_e2e.py and its siblings.
"""

from __future__ import annotations

import json
from pathlib import Path

import docker
import pytest
from mcp import Client

from gateway.approvals.records import Approver, Request
from gateway.approvals.store import ApprovalStore
from gateway.auth.principals import LOCAL, STATUS_PANEL, Principal, oauth_caller
from gateway.auth.scopes import ScopeSet
from gateway.mcp.approvals import ApprovalGate
from gateway.mcp.server import build_server
from gateway.operations import ComposeOperations
from gateway.policy.rules import Policy
from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory
from tests.gateway.approvals_fixtures import PANEL_URL, approval_of, kind, text_of
from tests.gateway.test_deploy import container_ids, content, two

pytestmark = pytest.mark.anyio

BOB = Approver("bob", oauth_caller("client-b"))


def gate(tmp_path: Path, policy: Policy) -> ApprovalGate:
    return ApprovalGate(ApprovalStore(tmp_path / "approvals.json"), policy, panel_url=PANEL_URL)


@pytest.mark.docker
async def test_a_deploy_waits_bound_to_its_file_and_env_whose_values_never_reach_the_approvals(
    ops: ComposeOperations,
    stacks: StackFactory,
    tmp_path: Path,
    audit_path: Path,
    docker_client: docker.DockerClient,
) -> None:
    project = "d" + tmp_path.name[-8:].lower().replace("_", "")
    stacks.track(project)
    approvals = gate(tmp_path, Policy(approve=("deploy",)))
    env = {"DB_PASSWORD": "s3cr3t-never-logged"}
    call = {"project": project, "compose_yaml": two(stacks), "env": env}
    async with Client(build_server(ops, approvals=approvals)) as client:
        approval = approval_of(await client.call_tool("deploy", call))
        assert not (stacks.root / project).exists()
        approvals.store.decide(approval, approve=True, by=BOB)
        for other in (
            {**call, "compose_yaml": two(stacks, 3602)},
            {**call, "env": {"DB_PASSWORD": "another"}},
            {**call, "wait": True},
        ):
            replayed = await client.call_tool("deploy", {**other, "approval": approval})
            assert kind(replayed) == "policy_violation" and "was asked for another call" in text_of(replayed)
        assert not (stacks.root / project).exists()
        deployed = content(await client.call_tool("deploy", {**call, "approval": approval}))
    assert deployed["version"] == 1 and set(container_ids(docker_client, project)) == {"web", "worker"}
    kept = (tmp_path / "approvals.json").read_text()
    assert "s3cr3t-never-logged" not in kept and "DB_PASSWORD" in kept and "compose_yaml" not in kept
    assert "s3cr3t-never-logged" not in audit_path.read_text()
    shown = json.loads(kept)["approvals"][approval]["arguments"]
    assert set(shown) == {"project", "wait", "sha256", "bytes", "env_names"} and shown["env_names"] == ["DB_PASSWORD"]


@pytest.mark.docker
async def test_down_tells_the_person_which_volumes_it_would_delete(
    ops: ComposeOperations, stacks: StackFactory, tmp_path: Path
) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    approvals = gate(tmp_path, Policy(stacks={project: {"approve": ("down",)}}))  # type: ignore[dict-item]
    async with Client(build_server(ops, approvals=approvals)) as client:
        content(await client.call_tool("up", {"project": project}))
        keeping = await client.call_tool("down", {"project": project})
        deleting = await client.call_tool("down", {"project": project, "volumes": True})
    assert approval_of(keeping) != approval_of(deleting)  # two calls, two approvals
    assert f"keeps named volume {project}_data (used by web)" in text_of(keeping)
    assert f"DELETES named volume {project}_data (used by web) and its data" in text_of(deleting)
    assert f"removes 2 container(s): {project}-web-1, {project}-worker-1" in text_of(deleting)
    listing = [a.tool for a in await approvals.visible(LOCAL)]
    assert listing == ["down", "down"]


@pytest.mark.docker
async def test_a_read_only_gateway_shows_approvals_and_decides_none(ops: ComposeOperations, tmp_path: Path) -> None:
    approvals = gate(tmp_path, Policy(approve=("up",)))
    async with Client(build_server(ops, read_only=True, approvals=approvals)) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        refused = await client.call_tool("approve", {"id": "0" * 32})
        listing = json.loads((await client.read_resource("compose://approvals")).contents[0].text)  # type: ignore[union-attr]
    assert not names & {"approve", "reject", "up"}
    assert kind(refused) == "policy_violation" and "--read-only mode" in text_of(refused)
    assert listing == {"approvals": []}


async def test_an_approval_is_seen_by_whoever_may_see_its_stack_or_decide_it_and_by_who_asked(tmp_path: Path) -> None:
    approvals = gate(tmp_path, Policy())
    store = approvals.store

    def ask(project: str, caller: str, person: str | None) -> str:
        request = Request("up", project, {"project": project}, "digest", caller, person, "state", "plan")
        return store.request(request)[0].id

    agents = ask("shop", "compose_agent_token", None)
    alices = ask("blog", oauth_caller("client-a"), "alice")

    def oauth(person: str, *grants: str) -> Principal:
        held = ScopeSet.parse(grants)
        return Principal(oauth_caller("client-x"), held.tools(), person=person, scopes=held)

    async def seen(principal: Principal) -> set[str]:
        return {a.id for a in await approvals.visible(principal)}

    assert await seen(LOCAL) == await seen(STATUS_PANEL) == {agents, alices}  # static tokens that see every stack
    assert await seen(oauth("carol", "compose:read:shop")) == {agents}
    assert await seen(oauth("dave", "compose:approve:blog")) == {alices}
    assert await seen(oauth("erin", "compose:deploy:other")) == set()
    # alice asked through client-a: that caller sees it whatever its scopes say.
    asker = Principal(oauth_caller("client-a"), frozenset(), person="alice", scopes=ScopeSet())
    assert await seen(asker) == {alices}
    found = await approvals.one(asker, alices)
    assert found is not None and found.url == f"{PANEL_URL}/approvals/{alices}"
    assert await approvals.one(asker, agents) is None  # the same answer as no approval at all
