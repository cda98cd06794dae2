"""The panel of a gateway with several hosts, in a real Chromium: stacks grouped by host, each
host's state, and a host that stops answering shown as such while the others' stacks stay.

The gateway is a real ``compose-agent serve`` with a TLS host and an SSH host (tests/engines).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from tests.conftest import StackFactory, random_name
from tests.engines import Engine as DindEngine
from tests.statuspanel.browser import browser, logged_in_page
from tests.statuspanel.conftest import Gateway, Panel, start_gateway, start_panel

__all__ = ["browser"]  # the fixture, imported for pytest

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.browser, pytest.mark.dind]

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


@pytest.fixture
def edge_app(tls_engine: DindEngine, busybox_image: str) -> Iterator[str]:
    """A compose project running on the TLS engine, started by that engine's own CLI (an external stack there)."""
    project = random_name("fe")
    labels = ["--label", f"{PROJECT_LABEL}={project}", "--label", f"{SERVICE_LABEL}=app"]
    cid = tls_engine.docker("run", "-d", "--init", *labels, busybox_image, "sleep", "600").stdout.strip()
    try:
        yield project
    finally:
        tls_engine.docker("rm", "-f", cid, check=False)


@pytest.fixture
def fleet_panel(
    stacks: StackFactory, tmp_path: Path, tls_engine: DindEngine, ssh_engine: DindEngine
) -> Iterator[tuple[Gateway, Panel]]:
    lab_dir = tmp_path / "lab-stacks"
    (lab_dir / "quiet").mkdir(parents=True)
    (lab_dir / "quiet" / "compose.yaml").write_text(f"services:\n  idle:\n    image: {stacks.image}\n")
    hosts = {
        "edge": {
            "docker_host": tls_engine.tls_host,
            "tls_verify": True,
            "cert_path": str(tls_engine.tls_dir),
            "stacks_dir": str(tmp_path / "edge-stacks"),
        },
        "lab": {"docker_host": ssh_engine.ssh_host, "stacks_dir": str(lab_dir), "read_only": True},
    }
    gateway = start_gateway(stacks, tmp_path, config={"hosts": hosts})
    try:
        panel = start_panel(tmp_path, env={"COMPOSE_AGENT_URL": gateway.mcp_url}, token=gateway.panel_token)
        try:
            yield gateway, panel
        finally:
            panel.stop()
    finally:
        gateway.stop()


async def reload_until(page: Page, host: str, *states: str, timeout: float) -> None:
    """Reload the dashboard until ``host`` shows one of ``states`` (the page is rendered by the server)."""
    deadline = time.monotonic() + timeout
    badge = page.get_by_test_id(f"host-state-{host}")
    while True:
        await page.reload()
        await expect(badge).to_be_visible()
        if (await badge.inner_text()).strip() in states:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the host {host} did not show {' or '.join(states)} within {timeout:g} s")
        await page.wait_for_timeout(500)


async def test_the_dashboard_groups_stacks_by_host_with_each_hosts_state(
    fleet_panel: tuple[Gateway, Panel], edge_app: str, tls_engine: DindEngine, browser: Browser
) -> None:
    _, panel = fleet_panel
    page, violations = await logged_in_page(browser, panel, wrong_first=False)
    await reload_until(page, "edge", "up", timeout=30)
    for host in ("local", "edge", "lab"):
        await expect(page.get_by_test_id(f"host-{host}")).to_be_visible()
    await expect(page.get_by_test_id("host-state-lab")).to_have_text("up")
    await expect(page.get_by_test_id("host-read-only-lab")).to_be_visible()
    await expect(page.get_by_test_id("host-read-only-edge")).to_have_count(0)

    # The edge engine's project is in the edge group, with its state read over TLS.
    edge_group = page.get_by_test_id("host-edge")
    card = edge_group.get_by_test_id(f"stack-{edge_app}")
    await expect(card).to_be_visible()
    await expect(card.get_by_test_id(f"state-{edge_app}-app")).to_have_text("running")
    # Another host's stack is read here; it is changed through the tools, so no buttons.
    await expect(card.get_by_test_id(f"remote-note-{edge_app}")).to_contain_text("on edge")
    await expect(card.locator("[data-action]")).to_have_count(0)
    await expect(page.get_by_test_id("host-local").get_by_test_id(f"stack-{edge_app}")).to_have_count(0)
    # The lab host's folder stack, with its service defined but not running.
    await expect(page.get_by_test_id("host-lab").get_by_test_id("state-quiet-idle")).to_have_text("missing")

    with tls_engine.paused_for():
        await reload_until(page, "edge", "timeout", "degraded", timeout=30)
        await expect(page.get_by_test_id("host-error-edge")).to_contain_text("'edge'")
        await expect(edge_group.get_by_test_id(f"stack-{edge_app}")).to_have_count(0)
        # The other hosts are listed as before.
        await expect(page.get_by_test_id("host-state-local")).to_have_text("up")
        await expect(page.get_by_test_id("host-lab").get_by_test_id("stack-quiet")).to_be_visible()

    await reload_until(page, "edge", "up", timeout=60)
    await expect(page.get_by_test_id(f"state-{edge_app}-app")).to_have_text("running")
    assert violations == []
    await page.context.close()
