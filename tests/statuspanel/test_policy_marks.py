"""The panel shows the policy guard's marks and its refusal, through a real gateway and a real engine."""

from __future__ import annotations

import re

import anyio
import httpx2
import pytest

from tests.conftest import StackFactory
from tests.statuspanel.conftest import Gateway, Panel

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


async def test_the_panel_marks_a_refused_stack_and_shows_the_refusal_of_its_up(
    stacks: StackFactory, gateway: Gateway, panel: Panel
) -> None:
    refused = stacks.make("services:\n  a:\n    image: {image}\n    privileged: true\n")
    fine = stacks.make("services:\n  a:\n    image: {image}\n    init: true\n    command: ['sleep', '3600']\n")
    headers = {"Authorization": f"Bearer {panel.token}"}
    async with httpx2.AsyncClient(base_url=panel.base, headers=headers, timeout=60) as client:
        with anyio.fail_after(60):
            while True:
                listed = {s["name"]: s.get("policy") for s in (await client.get("/api/v1/stacks")).json()["stacks"]}
                if listed.get(refused) and listed.get(fine):
                    break
                await anyio.sleep(0.1)
        assert listed[refused]["allowed"] is False and listed[refused]["rules"] == ["privileged"]
        assert listed[fine]["allowed"] is True

        up = await client.post(f"/api/v1/stacks/{refused}/up")
        assert up.status_code == 403
        assert "privileged" in up.json()["error"] and f"policy.stacks.{refused}.allow" in up.json()["error"]

    with panel.client(token=None) as browser:
        form = browser.get("/login").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form)
        assert csrf
        assert browser.post("/login", data={"csrf": csrf.group(1), "token": panel.token or ""}).status_code == 303
        html = browser.get("/").text
    assert f'data-testid="policy-{refused}"' in html and "refused: privileged" in html
    assert f'data-testid="policy-{fine}"' not in html
