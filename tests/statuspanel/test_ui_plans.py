"""The panel's parts of the policy guard, plans, versions and Swarm, in a real headless Chromium.

Through the panel and a real gateway on the real engine (and a real single-node swarm). Set
``PANEL_SCREENSHOTS=docs/images`` to save the screenshots the docs show.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from playwright.async_api import Browser, expect

from tests.conftest import STACK_FILES, WEB_WORKER, StackFactory
from tests.gateway.swarm_fixtures import TWO_REPLICAS, remove_stack, swarm
from tests.statuspanel.browser import browser, logged_in_page, running_stack, shot
from tests.statuspanel.conftest import Gateway, Panel, start_gateway, start_panel

__all__ = ["browser", "swarm"]  # the fixtures, imported for pytest

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.browser]

PRIVILEGED = "services:\n  a:\n    image: {image}\n    privileged: true\n"


def version_of(marker: str) -> str:
    """A one-service stack whose container says which version it is."""
    return (
        "services:\n  app:\n    image: {image}\n    init: true\n"
        f"    command: ['sh', '-c', 'echo {marker}; sleep 3600']\n"
    )


@pytest.fixture
def confirming_gateway(stacks: StackFactory, tmp_path: Path) -> Iterator[Gateway]:
    """A gateway whose operator asks for `down` to be confirmed, and lets the panel roll back."""
    gw = start_gateway(stacks, tmp_path, config={"policy": {"confirm": ["down"]}, "status_panel_tools": ["rollback"]})
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def confirming_panel(confirming_gateway: Gateway, tmp_path: Path) -> Iterator[Panel]:
    p = start_panel(
        tmp_path, env={"COMPOSE_AGENT_URL": confirming_gateway.mcp_url}, token=confirming_gateway.panel_token
    )
    try:
        yield p
    finally:
        p.stop()


def panel_get(panel: Panel, path: str) -> httpx2.Response:
    return httpx2.get(panel.base + path, headers={"Authorization": f"Bearer {panel.token}"}, timeout=60)


async def test_up_and_down_show_the_plan_first_and_a_refused_stack_says_why(
    stacks: StackFactory, confirming_gateway: Gateway, confirming_panel: Panel, browser: Browser
) -> None:
    panel = confirming_panel
    name = running_stack(stacks, panel)
    refused = stacks.make(PRIVILEGED)
    page, violations = await logged_in_page(browser, panel, wrong_first=False)

    # The refused stack: a badge, its reasons on the card, and the plan says up will change nothing.
    await page.get_by_test_id("stack-filter").fill(refused)
    badge = page.get_by_test_id(f"policy-{refused}")
    await expect(badge).to_have_text("refused: privileged", timeout=30_000)
    await page.get_by_test_id(f"policy-details-{refused}").locator("summary").click()
    await expect(page.get_by_test_id(f"policy-details-{refused}")).to_contain_text(
        "privileged: service 'a': privileged: true"
    )
    await page.get_by_test_id(f"action-{refused}-up").click()
    up_dialog = page.get_by_test_id("confirm-up")
    await expect(up_dialog).to_be_visible()
    await expect(page.get_by_test_id("plan-refused")).to_contain_text("privileged")
    await shot(page, "plan-refused")
    await page.get_by_test_id("confirm-up-ok").click()
    refusal = page.get_by_test_id("action-result").last
    await expect(refusal).to_have_attribute("data-outcome", "bad", timeout=30_000)
    await expect(refusal).to_contain_text("privileged")
    await expect(refusal).to_contain_text(f"policy.stacks.{refused}.allow")
    assert {s["state"] for s in panel_get(panel, f"/api/v1/stacks/{refused}").json()["services"]} == {"missing"}

    # down: the plan lists what goes, then the operator's confirmation shows the gateway's own plan.
    await page.get_by_test_id("stack-filter").fill(name)
    for close in await page.locator(".toast-close").all():
        await close.click()
    await page.get_by_test_id(f"action-{name}-down").click()
    plan = page.get_by_test_id("plan-down")
    await expect(plan).to_contain_text(f"{name}-web-1")
    await expect(plan).to_contain_text(f"{name}-worker-1")
    await expect(page.get_by_test_id(f"plan-volume-{name}_data")).to_contain_text("unless you tick the box")
    await shot(page, "plan-down")
    await page.get_by_test_id("confirm-ok").click()
    asked = page.get_by_test_id("confirm-gateway")
    await expect(asked).to_be_visible(timeout=30_000)
    await expect(page.get_by_test_id("gateway-plan")).to_contain_text("needs confirmation")
    await expect(page.get_by_test_id(f"state-{name}-worker")).to_have_text("running")  # nothing changed yet
    await page.get_by_test_id("confirm-gateway-ok").click()
    await expect(page.get_by_test_id("action-result").last).to_contain_text(f"down {name}", timeout=60_000)
    await expect(page.get_by_test_id(f"state-{name}-worker")).to_have_text("missing", timeout=15_000)

    # up: the plan says what Compose would create.
    await page.get_by_test_id(f"action-{name}-up").click()
    await expect(page.get_by_test_id("plan-action-web")).to_contain_text("create")
    await expect(page.get_by_test_id("plan-action-worker")).to_contain_text("create")
    await shot(page, "plan-up")
    await page.get_by_test_id("confirm-up-ok").click()
    await expect(page.get_by_test_id(f"state-{name}-worker")).to_have_text("running", timeout=60_000)
    assert violations == []
    await page.context.close()


async def test_a_stacks_page_lists_its_versions_and_rolls_back_to_one(
    stacks: StackFactory, confirming_gateway: Gateway, confirming_panel: Panel, browser: Browser
) -> None:
    panel = confirming_panel
    name = stacks.make(version_of("marker-one"))
    # A person deploys a new file with the full token; the file found on disk is kept as version 1.
    headers = {"Authorization": f"Bearer {confirming_gateway.agent_token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=120) as http:
        async with Client(streamable_http_client(confirming_gateway.mcp_url, http_client=http)) as client:
            compose = version_of("marker-two").replace("{image}", stacks.image)
            deployed = await client.call_tool("deploy", {"project": name, "compose_yaml": compose, "wait": True})
    assert not deployed.is_error, deployed.content

    page, violations = await logged_in_page(browser, panel, wrong_first=False)
    await page.goto(f"{panel.base}/stacks/{name}")
    await expect(page.get_by_test_id("version-2").get_by_test_id("version-current")).to_be_visible()
    await expect(page.get_by_test_id("version-1")).to_contain_text("disk")
    await expect(page.get_by_test_id("rollback-2")).to_have_count(0)
    await expect(page.get_by_test_id(f"state-{name}-app")).to_have_text("running")
    await shot(page, "stack")

    await page.get_by_test_id("rollback-1").click()
    await expect(page.get_by_test_id("confirm-rollback")).to_contain_text(f"Roll {name} back to version 1?")
    await page.get_by_test_id("confirm-rollback-ok").click()
    await expect(page.get_by_test_id("action-result").last).to_contain_text(f"roll back {name} to v1", timeout=60_000)
    await expect(page.get_by_test_id("action-result").last).to_have_attribute("data-outcome", "ok")
    # Version 1 is current again; version 2 stays, to roll forward to.
    await expect(page.get_by_test_id("version-1").get_by_test_id("version-current")).to_be_visible(timeout=15_000)
    await expect(page.get_by_test_id("rollback-2")).to_be_visible()
    await expect(page.get_by_test_id("rollback-1")).to_have_count(0)
    assert "marker-one" in (stacks.root / name / "compose.yaml").read_text()

    # The container running now is version 1's.
    with anyio.fail_after(30):
        while "marker-one" not in panel_get(panel, f"/api/v1/stacks/{name}/logs?services=app&tail=5").json()["text"]:
            await anyio.sleep(0.2)
    audit = (Path(confirming_gateway.env["COMPOSE_AGENT_STATE_DIR"]) / "audit.log").read_text().splitlines()
    rollbacks = [json.loads(line) for line in audit if '"rollback"' in line]
    outcome = [r for r in rollbacks if r["tool"] == "rollback" and r["phase"] == "outcome"][-1]
    assert outcome["outcome"] == "ok" and outcome["on_behalf_of"] == "token"  # logged in with the token
    assert violations == []
    await page.context.close()


async def test_a_swarm_stack_shows_its_replicas_and_their_nodes(
    stacks: StackFactory, swarm: str, gateway: Gateway, panel: Panel, browser: Browser
) -> None:
    name = stacks.make(TWO_REPLICAS)
    try:
        up = httpx2.post(
            f"{panel.base}/api/v1/stacks/{name}/up", headers={"Authorization": f"Bearer {panel.token}"}, timeout=180
        )
        assert up.status_code == 200, up.text
        beside = stacks.make(WEB_WORKER, files=STACK_FILES)
        page, violations = await logged_in_page(browser, panel, wrong_first=False)
        await page.get_by_test_id("stack-filter").fill(name)
        card = page.get_by_test_id(f"stack-{name}")
        await expect(card).to_have_attribute("data-target", "swarm")
        await expect(page.get_by_test_id(f"replicas-{name}-web")).to_have_text("2/2 running", timeout=60_000)
        await expect(page.get_by_test_id(f"task-{name}-web")).to_have_count(2)
        node = (await page.get_by_test_id(f"task-{name}-web").first.get_by_test_id("node").inner_text()).strip()
        assert node and node != "no node yet"
        await expect(page.get_by_test_id(f"target-{name}")).to_have_text("swarm · 1 node")
        await shot(page, "dashboard-swarm")
        # The Compose stack beside it keeps one row per container.
        await page.get_by_test_id("stack-filter").fill(beside)
        await expect(page.get_by_test_id(f"stack-{beside}")).to_have_attribute("data-target", "compose")
        assert violations == []
        await page.context.close()
    finally:
        remove_stack(name)
