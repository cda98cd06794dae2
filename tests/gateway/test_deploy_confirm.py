"""Confirmation: tokens bound to a call and a state, and elicitation where the client supports it."""

from __future__ import annotations

import re
from typing import Any

import docker
import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.types import CallToolResult, ElicitRequestParams, ElicitResult

from gateway.deploy.confirm import Confirmations
from gateway.errors import ERROR_META_KEY, ConfirmationRequired, PolicyViolation
from gateway.mcp.server import build_server
from gateway.operations import ComposeOperations
from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory, random_name
from tests.gateway.test_deploy import container_ids, content, two

pytestmark = pytest.mark.anyio

TOKEN_RE = re.compile(r'confirm="([^"]+)"')


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def issue(book: Confirmations, arguments: dict[str, Any], *, caller: str = "agent", state: str = "s1") -> str:
    required = book.issue("down", arguments, caller=caller, state=state, plan="the plan")
    assert "the plan" in str(required) and f'confirm="{required.token}"' in str(required)
    return required.token


def test_a_token_works_once_for_the_call_caller_and_state_it_was_issued_for() -> None:
    book = Confirmations(["down"])
    call = {"project": "shop", "volumes": False}
    token = issue(book, call)
    book.redeem(token, "down", {**call, "confirm": token}, caller="agent", state="s1")
    with pytest.raises(PolicyViolation, match="already used or expired"):
        book.redeem(token, "down", call, caller="agent", state="s1")

    for tool, arguments, caller, state, why in [
        ("down", {"project": "shop", "volumes": True}, "agent", "s1", "different call"),
        ("up", call, "agent", "s1", "different call"),
        ("down", call, "agent", "s2", "changed since the plan"),
        ("down", call, "someone_else", "s1", "unknown"),
    ]:
        token = issue(book, call)
        with pytest.raises(PolicyViolation, match=why):
            book.redeem(token, tool, arguments, caller=caller, state=state)
        with pytest.raises(PolicyViolation, match="already used"):  # a token that did not fit is spent too
            book.redeem(token, "down", call, caller="agent", state="s1")


def test_a_token_expires_after_ten_minutes() -> None:
    clock = Clock()
    book = Confirmations(["down"], clock=clock)
    call = {"project": "shop"}
    fresh, stale = issue(book, call), issue(book, call)
    clock.now += 599
    book.redeem(fresh, "down", call, caller="agent", state="s1")
    clock.now += 2
    with pytest.raises(PolicyViolation, match="expired"):
        book.redeem(stale, "down", call, caller="agent", state="s1")


def test_only_the_listed_tools_need_confirming() -> None:
    book = Confirmations(["down", "deploy"])
    assert book.required("down") and book.required("deploy") and not book.required("up")
    assert isinstance(book.issue("down", {"project": "x"}, caller="a", state="s", plan=""), ConfirmationRequired)


def kind(result: CallToolResult) -> str | None:
    return (result.meta or {}).get(ERROR_META_KEY)


@pytest.mark.docker
async def test_down_with_confirm_in_the_policy_acts_only_with_the_token(
    ops: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    async with Client(build_server(ops, confirm=["down"])) as client:
        content(await client.call_tool("up", {"project": project}))  # up is not listed: it acts at once
        before = container_ids(docker_client, project)

        first = await client.call_tool("down", {"project": project})
        assert first.is_error and kind(first) == "confirmation_required"
        text = first.content[0].text  # type: ignore[union-attr]
        assert f"removes 2 container(s): {project}-web-1, {project}-worker-1" in text
        assert f"keeps named volume {project}_data (used by web)" in text
        assert container_ids(docker_client, project) == before  # nothing changed
        token = TOKEN_RE.search(text).group(1)  # type: ignore[union-attr]

        other_call = await client.call_tool("down", {"project": project, "volumes": True, "confirm": token})
        assert kind(other_call) == "policy_violation" and container_ids(docker_client, project) == before

        token = TOKEN_RE.search((await client.call_tool("down", {"project": project})).content[0].text).group(1)  # type: ignore[union-attr]
        done = await client.call_tool("down", {"project": project, "confirm": token})
        assert not done.is_error, done.content
        assert container_ids(docker_client, project) == {}
        assert docker_client.volumes.get(f"{project}_data")

        spent = await client.call_tool("down", {"project": project, "confirm": token})
        assert "already used or expired" in spent.content[0].text  # type: ignore[union-attr]


@pytest.mark.docker
async def test_a_token_is_refused_once_the_stack_changed(
    ops: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    project = stacks.make(WEB_WORKER, files=STACK_FILES)
    async with Client(build_server(ops, confirm=["down", "restart"])) as client:
        content(await client.call_tool("up", {"project": project}))
        planned = await client.call_tool("down", {"project": project})
        token = TOKEN_RE.search(planned.content[0].text).group(1)  # type: ignore[union-attr]
        docker_client.containers.get(f"{project}-worker-1").stop(timeout=1)  # someone else acts meanwhile
        late = await client.call_tool("down", {"project": project, "confirm": token})

        restart = await client.call_tool("restart", {"project": project, "services": ["web"]})
        token = TOKEN_RE.search(restart.content[0].text).group(1)  # type: ignore[union-attr]
        (stacks.root / project / "compose.yaml").write_text(WEB_WORKER.replace("{image}", stacks.image) + "\n")
        edited = await client.call_tool("restart", {"project": project, "services": ["web"], "confirm": token})

    assert "changed since the plan was made" in late.content[0].text  # type: ignore[union-attr]
    assert "changed since the plan was made" in edited.content[0].text  # type: ignore[union-attr]
    assert set(container_ids(docker_client, project)) == {"web", "worker"}


@pytest.mark.docker
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_client_that_can_elicit_is_asked_with_the_plan(
    mode: str, ops: ComposeOperations, stacks: StackFactory, docker_client: docker.DockerClient
) -> None:
    project = random_name("d")
    stacks.track(project)
    asked: list[str] = []
    answers = iter(["decline", "accept"])

    async def person(ctx: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        action = next(answers)
        return ElicitResult(action=action, content={"approve": True} if action == "accept" else None)  # type: ignore[arg-type]

    server = build_server(ops, confirm=["deploy"])
    async with Client(server, elicitation_callback=person, mode=mode) as client:  # type: ignore[arg-type]
        declined = await client.call_tool("deploy", {"project": project, "compose_yaml": two(stacks)})
        assert "was not approved; nothing was changed" in declined.content[0].text  # type: ignore[union-attr]
        assert not (stacks.root / project).exists()
        approved = content(await client.call_tool("deploy", {"project": project, "compose_yaml": two(stacks)}))

    assert approved["version"] == 1 and set(container_ids(docker_client, project)) == {"web", "worker"}
    assert len(asked) == 2
    assert f"What up does to '{project}'" in asked[0] and "web: create, it has no container yet" in asked[0]
    assert "Policy: allowed." in asked[0]
