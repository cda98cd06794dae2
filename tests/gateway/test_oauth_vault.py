"""With Vault configured, people and OAuth grants live in Vault beside the tokens: a restart keeps both."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest

from tests.conftest import StackFactory
from tests.gateway import vault_fixtures
from tests.gateway.conftest import stop_process
from tests.gateway.oauth_fixtures import PASSWORD, connect, run_users, start_oauth_gateway
from tests.gateway.oauth_person import MemoryStorage, ScriptedPerson
from tests.gateway.vault_fixtures import OpenBao, fresh_hash
from tests.polling import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.vault, pytest.mark.docker]

openbao = vault_fixtures.openbao


async def test_people_and_grants_in_vault_survive_a_restart_and_a_removal_counts(
    tmp_path: Path, stacks: StackFactory, openbao: OpenBao
) -> None:
    deployment = fresh_hash()
    for key in ("compose_agent_token", "status_panel_token"):
        openbao.write_token(f"agent/{deployment}/{key}", f"{key}-{deployment}")
    vault = {"VAULT_ADDRESS": openbao.address, "VAULT_TOKEN": openbao.root_token, "DEPLOYMENT_HASH": deployment}
    state = tmp_path / "state"
    added = run_users(
        state, "add", "lou", "--password-stdin", "--grant", "compose:read", stdin=PASSWORD + "\n", env=vault
    )
    assert added.returncode == 0, added.stderr
    oauth = start_oauth_gateway(tmp_path, stacks.root, state=state, env=vault)
    storage = MemoryStorage()
    try:
        async with connect(oauth.url, ScriptedPerson("lou", PASSWORD), storage=storage) as client:
            assert not (await client.call_tool("list_stacks", {})).is_error
    finally:
        stop_process(oauth.gw.process)
    assert storage.tokens is not None
    stored = openbao.request("GET", f"secret/data/agent/{deployment}/oauth")["data"]["data"]
    assert len(stored["tokens"]) == 2 and storage.tokens.access_token not in json.dumps(stored)
    assert not (state / "oauth.json").exists() and not (state / "people.json").exists()
    again = start_oauth_gateway(tmp_path, stacks.root, state=state, env=vault, port=oauth.port)
    try:
        nobody = ScriptedPerson("lou", "not the password at all")
        async with connect(again.url, nobody, storage=storage) as client:
            assert not (await client.call_tool("list_stacks", {})).is_error
        assert nobody.pages == []
        assert run_users(state, "remove", "lou", env=vault).returncode == 0
        headers = {"Authorization": f"Bearer {storage.tokens.access_token}", "Accept": "application/json"}
        async with httpx2.AsyncClient(timeout=30) as http:

            async def refused() -> bool:
                ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
                return (await http.post(again.url, json=ping, headers=headers)).status_code == 401

            await eventually(refused, timeout=5.0, interval=0.1, what="lou's token refused after the removal")
    finally:
        stop_process(again.gw.process)
