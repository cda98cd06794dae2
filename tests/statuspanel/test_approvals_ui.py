"""People approve and reject an agent's changes in the panel, in a real headless Chromium.

A real gateway whose operator lists ``up`` and ``down`` in ``policy.approve``, a real panel reading
the people the gateway shares with it, the agent on the gateway's own token, the real engine. Set
``PANEL_SCREENSHOTS=docs/images`` to save the screenshot the docs show.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from mcp.types import CallToolResult
from playwright.async_api import Browser, Page, expect

from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory
from tests.gateway.approvals_fixtures import agent, chain, containers, kind, text_of
from tests.gateway.oauth_fixtures import PASSWORD, run_users
from tests.polling import wait_for
from tests.statuspanel.browser import DESKTOP, browser, shot, watch_for_violations
from tests.statuspanel.conftest import Gateway, Panel, start_gateway, start_panel

__all__ = ["browser"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.browser]


@dataclass
class Deployment:
    gateway: Gateway
    panel: Panel

    @property
    def state(self) -> Path:
        return Path(self.gateway.env["COMPOSE_AGENT_STATE_DIR"])

    async def agent_call(self, tool: str, arguments: dict[str, object]) -> CallToolResult:
        async with agent(self.gateway.mcp_url, self.gateway.agent_token) as me:
            return await me.call_tool(tool, arguments)


@pytest.fixture
def deployment(stacks: StackFactory, tmp_path: Path) -> Iterator[Deployment]:
    gateway = start_gateway(stacks, tmp_path, config={"policy": {"approve": ["up", "down"]}})
    try:
        state = Path(gateway.env["COMPOSE_AGENT_STATE_DIR"])
        for name, grants in (("bob", ["compose:approve"]), ("alice", ["compose:write", "compose:approve"])):
            args = [arg for grant in grants for arg in ("--grant", grant)]
            done = run_users(state, "add", name, "--password-stdin", *args, stdin=PASSWORD + "\n")
            assert done.returncode == 0, done.stderr
        shared = state / "panel" / "people.json"
        env = {"COMPOSE_AGENT_URL": gateway.mcp_url, "COMPOSE_AGENT_STATE_DIR": str(state / "panel")}
        wait_for(
            lambda: shared.exists() and "alice" in shared.read_text(),
            timeout=10,
            what="the gateway sharing the people with the panel",
        )
        panel = start_panel(tmp_path, env=env, token=gateway.panel_token, name="approvals-panel")
        try:
            yield Deployment(gateway, panel)
        finally:
            panel.stop()
    finally:
        gateway.stop()


async def person_at(browser: Browser, deployment: Deployment, name: str, path: str) -> tuple[Page, list[str]]:
    """``name`` opens ``path`` in a browser of their own, and logs in on the way."""
    context = await browser.new_context(viewport=DESKTOP)
    page = await context.new_page()
    violations = watch_for_violations(page)
    await page.goto(deployment.panel.base + path)
    await expect(page).to_have_url(re.compile(r"/login\?next="))
    await page.get_by_test_id("login-username").fill(name)
    await page.get_by_test_id("login-password").fill(PASSWORD)
    await page.get_by_test_id("login-submit").click()
    await expect(page).to_have_url(deployment.panel.base + path)
    return page, violations


def approval_id(result: CallToolResult) -> str:
    assert kind(result) == "approval_required", text_of(result)
    found = re.search(r'approval="([0-9a-f]{32})"', text_of(result))
    assert found
    return found.group(1)


async def test_a_person_approves_and_rejects_in_the_panel_and_the_agent_acts_once_or_not_at_all(
    deployment: Deployment, stacks: StackFactory, browser: Browser, docker_client: docker.DockerClient
) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    first = approval_id(await deployment.agent_call("up", {"project": site}))

    # bob follows the link an approval_required result gives, logging in on the way.
    page, violations = await person_at(browser, deployment, "bob", f"/approvals/{first}")
    card = page.get_by_test_id(f"approval-{first}")
    await expect(card.get_by_test_id("approval-status")).to_have_text("pending")
    await expect(card.get_by_test_id("approval-plan")).to_contain_text("web: create, it has no container yet")
    await expect(card.get_by_test_id("approval-asked-by")).to_have_text("compose_agent_token")
    await expect(page.get_by_test_id("approvals-badge")).to_have_text("1")
    await shot(page, "approval")
    await card.get_by_test_id(f"approve-{first}").click()
    await expect(page.get_by_test_id("action-result").last).to_contain_text(f"Approved: up on {site}")
    await expect(card.get_by_test_id("approval-status")).to_have_text("approved", timeout=15_000)
    await expect(card.get_by_test_id("approval-decided-by")).to_contain_text("bob")
    await expect(page.get_by_test_id("approvals-badge")).to_be_hidden()
    assert containers(docker_client, site) == {}  # approving runs nothing

    done = await deployment.agent_call("up", {"project": site, "approval": first})
    assert not done.is_error, text_of(done)
    assert set(containers(docker_client, site)) == {"web", "worker"}
    again = await deployment.agent_call("up", {"project": site, "approval": first})
    assert "acts once" in text_of(again)
    await expect(card.get_by_test_id("approval-status")).to_have_text("used", timeout=15_000)

    # The next one appears on the list as it waits, and bob rejects it.
    second = approval_id(await deployment.agent_call("down", {"project": site, "volumes": True}))
    await page.get_by_test_id("nav-approvals").click()
    listed = page.get_by_test_id(f"approval-{second}")
    await expect(listed.get_by_test_id("approval-plan")).to_contain_text(f"DELETES named volume {site}_data")
    await expect(page.get_by_test_id("approvals-badge")).to_have_text("1")
    await listed.get_by_test_id(f"reject-{second}").click()
    await expect(listed.get_by_test_id("approval-status")).to_have_text("rejected", timeout=15_000)
    refused = await deployment.agent_call("down", {"project": site, "volumes": True, "approval": second})
    assert kind(refused) == "policy_violation" and "was rejected by bob" in text_of(refused)
    assert set(containers(docker_client, site)) == {"web", "worker"}
    assert violations == []
    await page.context.close()

    lines = chain(deployment.state / "audit.log", first)
    assert [(step, caller, person) for _, phase, _, step, caller, person in lines if phase != "intent"] == [
        ("requested", "compose_agent_token", None),
        ("approved", "status_panel_token", "bob"),
        ("executed", "compose_agent_token", None),
        ("refused", "compose_agent_token", None),
    ]


async def test_a_persons_own_change_from_the_panel_waits_for_someone_else(
    deployment: Deployment, stacks: StackFactory, browser: Browser, docker_client: docker.DockerClient
) -> None:
    site = stacks.make(WEB_WORKER, files=STACK_FILES)
    page, violations = await person_at(browser, deployment, "alice", "/")
    await page.get_by_test_id(f"action-{site}-up").click()
    await page.get_by_test_id("confirm-up-ok").click()  # the panel's own dialog, with the plan: not an approval
    toast = page.get_by_test_id("action-result").last
    await expect(toast).to_contain_text(f"up {site} \u2014 waits for a person's approval", timeout=30_000)
    await toast.get_by_test_id("action-result-link").click()
    await expect(page).to_have_url(re.compile(r"/approvals/[0-9a-f]{32}$"))
    mine = page.url.rsplit("/", 1)[1]
    card = page.get_by_test_id(f"approval-{mine}")
    await expect(card.get_by_test_id("approval-asked-by")).to_contain_text("alice")
    await expect(card.get_by_test_id(f"approve-{mine}")).to_be_disabled()
    await expect(card.get_by_test_id("approval-why-not")).to_have_text(
        "You asked for this change: another person decides it."
    )
    assert containers(docker_client, site) == {}

    # bob approves it, in a browser of his own; then alice's page offers her to go ahead, once.
    bobs, _ = await person_at(browser, deployment, "bob", f"/approvals/{mine}")
    await expect(bobs.get_by_test_id(f"run-{mine}")).to_have_count(0)  # not his to send
    await bobs.get_by_test_id(f"approve-{mine}").click()
    await expect(bobs.get_by_test_id(f"approval-{mine}").get_by_test_id("approval-status")).to_have_text(
        "approved", timeout=15_000
    )
    await bobs.context.close()
    await expect(card.get_by_test_id("approval-status")).to_have_text("approved", timeout=15_000)
    assert containers(docker_client, site) == {}
    await card.get_by_test_id(f"run-{mine}").click()
    await expect(card.get_by_test_id("approval-status")).to_have_text("used", timeout=60_000)
    assert set(containers(docker_client, site)) == {"web", "worker"}
    assert violations == []
    await page.context.close()
    steps = [(line[0], line[1], line[3], line[4], line[5]) for line in chain(deployment.state / "audit.log", mine)]
    assert steps == [
        ("up", "outcome", "requested", "status_panel_token", "alice"),
        ("approve", "intent", "approved", "status_panel_token", "bob"),
        ("approve", "outcome", "approved", "status_panel_token", "bob"),
        ("up", "intent", "executed", "status_panel_token", "alice"),
        ("up", "outcome", "executed", "status_panel_token", "alice"),
    ]
