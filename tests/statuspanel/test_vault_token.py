"""The panel takes its own token from Vault, like the gateway, and follows a rotation without a restart."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StackFactory
from tests.gateway.vault_fixtures import OpenBao, fresh_hash, openbao  # noqa: F401 - the fixture
from tests.statuspanel.conftest import Gateway, Panel, launch_gateway, poll, start_panel

pytestmark = [pytest.mark.vault, pytest.mark.docker]


def vault_env(server: OpenBao, deployment: str, key: str) -> dict[str, str]:
    return {
        "VAULT_ADDRESS": server.address,
        "VAULT_TOKEN": server.root_token,
        "DEPLOYMENT_HASH": deployment,
        "VAULT_TOKEN_KEY": key,
        "VAULT_REFRESH_SECS": "0.5",
    }


@pytest.fixture
def vault_gateway(openbao: OpenBao, stacks: StackFactory, tmp_path: Path) -> Iterator[tuple[Gateway, str]]:  # noqa: F811
    deployment = fresh_hash()
    openbao.write_token(f"agent/{deployment}/compose_agent_token", secrets.token_urlsafe(24))
    openbao.write_token(f"agent/{deployment}/status_panel_token", secrets.token_urlsafe(24))
    gw = launch_gateway(stacks, tmp_path, env=vault_env(openbao, deployment, "compose_agent_token"))
    try:
        yield gw, deployment
    finally:
        gw.stop()


def test_the_panel_uses_its_vault_token_and_follows_a_rotation(
    openbao: OpenBao,  # noqa: F811
    vault_gateway: tuple[Gateway, str],
    stacks: StackFactory,
    tmp_path: Path,
) -> None:
    gateway, deployment = vault_gateway
    project = stacks.make("services:\n  one:\n    image: {image}\n    command: ['sleep', '3600']\n    init: true\n")
    path = f"agent/{deployment}/status_panel_token"
    old = openbao.read_token(path)
    panel: Panel = start_panel(
        tmp_path,
        env={**vault_env(openbao, deployment, "status_panel_token"), "COMPOSE_AGENT_URL": gateway.mcp_url},
        token=None,
    )
    try:
        with panel.client(old) as client:
            stacks_seen = poll(lambda: client.get("/api/v1/stacks"), 15, what="the panel reaching the gateway")
            assert stacks_seen.status_code == 200, stacks_seen.text
            assert project in {s["name"] for s in stacks_seen.json()["stacks"]}

        new = secrets.token_urlsafe(24)
        openbao.write_token(path, new)
        # Wait for the refresh in the panel's log, not by presenting the new token until it works: a
        # wrong token is a failed credential, and the panel limits further failures with 429.
        poll(lambda: "tokens changed in" in panel.output(), 15, what="the panel to see the rotation")
        with panel.client(new) as client:
            # Accepted by the panel, and presented by it to the gateway, within a refresh or two.
            response = poll(
                lambda: (r := client.get(f"/api/v1/stacks/{project}")).status_code == 200 and r,
                15,
                what="the rotated token to work end to end",
            )
            assert response.json()["project"] == project
        with panel.client(old) as client:
            assert client.get("/api/v1/stacks").status_code == 401
        for secret in (old, new):
            assert secret not in panel.output() and secret not in gateway.output()
    finally:
        panel.stop()


@pytest.mark.docker
def test_the_panel_reads_the_token_the_gateway_generated_in_a_shared_state_dir(
    stacks: StackFactory, tmp_path: Path
) -> None:
    state = tmp_path / "shared-state"
    gateway = launch_gateway(stacks, tmp_path, env={"COMPOSE_AGENT_STATE_DIR": str(state)})
    try:
        tokens = json.loads((state / "tokens.json").read_text())
        panel = start_panel(
            tmp_path, env={"COMPOSE_AGENT_STATE_DIR": str(state), "COMPOSE_AGENT_URL": gateway.mcp_url}, token=None
        )
        try:
            with panel.client(tokens["status_panel_token"]) as client:
                listed = poll(lambda: (r := client.get("/api/v1/stacks")).status_code == 200 and r, 15, what="200")
                assert isinstance(listed.json()["stacks"], list)
            with panel.client(None) as client:
                assert client.get("/api/v1/stacks").status_code == 401
            with panel.client(tokens["compose_agent_token"]) as client:
                assert client.get("/api/v1/stacks").status_code == 401  # the panel takes only its own token
        finally:
            panel.stop()
    finally:
        gateway.stop()
