"""VaultClient and the operator CLI against a real OpenBao dev server, checked through Vault's own HTTP API."""

from __future__ import annotations

import argparse
import io
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.auth.vault import SecretMissing, VaultClient
from gateway.cli.vault import add_vault_parser, run_vault_command
from gateway.config import load_settings
from gateway.errors import ConfigError, VaultError
from tests.conftest import free_port
from tests.gateway import vault_fixtures
from tests.gateway.vault_fixtures import OpenBao, fresh_hash

# The session-wide OpenBao dev server (a fixture; assigned rather than imported so ruff sees no shadowing).
openbao = vault_fixtures.openbao

pytestmark = [pytest.mark.anyio, pytest.mark.vault]


def _env(bao: OpenBao, **extra: str) -> dict[str, str]:
    return {"VAULT_ADDRESS": bao.address, "VAULT_TOKEN": bao.root_token, **extra}


@pytest.mark.parametrize("key", ["compose_agent_token", "status_panel_token"])
async def test_store_then_fetch_uses_the_seed_path_on_both_keys(openbao: OpenBao, key: str) -> None:
    client = VaultClient.from_env(_env(openbao))
    deployment = fresh_hash()
    token = secrets.token_urlsafe(24)

    await client.store_agent_token(deployment, token, key)

    assert openbao.read_token(f"agent/{deployment}/{key}") == token
    assert await client.fetch_agent_token(deployment, key) == token
    client.close()


async def test_fetch_reads_what_was_written_over_plain_http(openbao: OpenBao) -> None:
    deployment = fresh_hash()
    openbao.write_token(f"agent/{deployment}/status_panel_token", "written-by-curl")

    client = VaultClient.from_env(_env(openbao))

    assert await client.fetch_agent_token(deployment, "status_panel_token") == "written-by-curl"


async def test_the_default_key_comes_from_vault_token_key_and_the_prefix_from_its_variable(openbao: OpenBao) -> None:
    client = VaultClient.from_env(
        _env(openbao, VAULT_TOKEN_KEY="status_panel_token", VAULT_AGENT_PATH_PREFIX="team-a/agents")
    )
    deployment = fresh_hash()

    await client.store_agent_token(deployment, "panel-token")

    assert openbao.read_token(f"team-a/agents/{deployment}/status_panel_token") == "panel-token"
    assert await client.fetch_agent_token(deployment) == "panel-token"


async def test_from_settings_matches_from_env(openbao: OpenBao, tmp_path: Path) -> None:
    env = _env(openbao, VAULT_TOKEN_KEY="compose_agent_token", CONFIG_PATH=str(tmp_path / "none.json"))
    client = VaultClient.from_settings(load_settings(env))
    deployment = fresh_hash()

    await client.store_agent_token(deployment, "agent-token")

    assert openbao.read_token(f"agent/{deployment}/compose_agent_token") == "agent-token"
    assert client.path(deployment) == f"secret/agent/{deployment}/compose_agent_token"


async def test_a_wrong_vault_token_is_permission_denied_naming_address_and_path_not_the_token(
    openbao: OpenBao,
) -> None:
    wrong = f"wrong-{secrets.token_hex(8)}"
    client = VaultClient(openbao.address, wrong)
    deployment = fresh_hash()

    with pytest.raises(VaultError) as caught:
        await client.fetch_agent_token(deployment, "compose_agent_token")

    message = str(caught.value)
    assert "permission denied" in message
    assert openbao.address in message
    assert f"secret/agent/{deployment}/compose_agent_token" in message
    assert wrong not in message
    with pytest.raises(VaultError, match="permission denied") as caught:
        await client.store_agent_token(deployment, "new-token", "compose_agent_token")
    assert wrong not in str(caught.value) and "new-token" not in str(caught.value)


async def test_an_unreachable_vault_names_its_address_and_the_path() -> None:
    address = f"http://127.0.0.1:{free_port()}"
    client = VaultClient(address, "some-vault-token")

    with pytest.raises(VaultError) as caught:
        await client.fetch_agent_token("abc123", "status_panel_token")

    message = str(caught.value)
    assert f"cannot reach Vault at {address}" in message
    assert "secret/agent/abc123/status_panel_token" in message
    assert "some-vault-token" not in message


async def test_a_missing_secret_is_reported_as_missing(openbao: OpenBao) -> None:
    client = VaultClient.from_env(_env(openbao))
    deployment = fresh_hash()

    with pytest.raises(SecretMissing, match=f"no secret at secret/agent/{deployment}/compose_agent_token"):
        await client.fetch_agent_token(deployment, "compose_agent_token")


async def test_a_deleted_latest_version_counts_as_missing(openbao: OpenBao) -> None:
    client = VaultClient.from_env(_env(openbao))
    deployment = fresh_hash()
    await client.store_agent_token(deployment, "soon-deleted", "status_panel_token")
    openbao.delete_latest(f"agent/{deployment}/status_panel_token")

    with pytest.raises(SecretMissing):
        await client.fetch_agent_token(deployment, "status_panel_token")


async def test_a_secret_without_a_token_field_says_so(openbao: OpenBao) -> None:
    deployment = fresh_hash()
    openbao.request("POST", f"secret/data/agent/{deployment}/status_panel_token", {"data": {"value": "x"}})
    client = VaultClient.from_env(_env(openbao))

    with pytest.raises(VaultError, match="has no field 'token'"):
        await client.fetch_agent_token(deployment, "status_panel_token")


@pytest.mark.parametrize(
    ("deployment", "key"),
    [("../other", "status_panel_token"), ("..", "status_panel_token"), ("abc", "../../sys/policy"), ("a/b", "k")],
)
async def test_names_that_could_traverse_paths_are_refused_before_any_request(deployment: str, key: str) -> None:
    # The address is unreachable: a request would give a VaultError, not the ConfigError asserted here.
    client = VaultClient(f"http://127.0.0.1:{free_port()}", "t")

    with pytest.raises(ConfigError, match="is not allowed"):
        await client.fetch_agent_token(deployment, key)
    with pytest.raises(ConfigError, match="is not allowed"):
        await client.store_agent_token(deployment, "token", key)


def test_from_env_needs_an_address_and_a_token() -> None:
    with pytest.raises(ConfigError, match="VAULT_ADDRESS"):
        VaultClient.from_env({"VAULT_TOKEN": "t"})
    with pytest.raises(ConfigError, match="VAULT_TOKEN"):
        VaultClient.from_env({"VAULT_ADDRESS": "http://127.0.0.1:8200"})
    with pytest.raises(ConfigError, match="http"):
        VaultClient.from_env({"VAULT_ADDRESS": "127.0.0.1:8200", "VAULT_TOKEN": "t"})


async def test_a_token_that_cannot_travel_in_a_header_is_refused(openbao: OpenBao) -> None:
    client = VaultClient.from_env(_env(openbao))

    for bad in ["", "has space", "line\nbreak"]:
        with pytest.raises(ConfigError):
            await client.store_agent_token(fresh_hash(), bad, "status_panel_token")


# The operator CLI, called the way gateway/__main__.py will call it.


def _cli(argv: list[str], environ: dict[str, str], stdin: str = "") -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="compose-agent")
    add_vault_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    code = run_vault_command(args, environ, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("key", ["compose_agent_token", "status_panel_token"])
def test_cli_store_writes_where_the_seed_says(openbao: OpenBao, key: str) -> None:
    deployment = fresh_hash()

    code, out, err = _cli(
        ["vault", "store", "--deployment-hash", deployment, "--key", key, "--token", "cli-token"], _env(openbao)
    )

    assert (code, out) == (0, "")
    assert f"secret/agent/{deployment}/{key}" in err and "cli-token" not in err
    assert openbao.read_token(f"agent/{deployment}/{key}") == "cli-token"


def test_cli_store_reads_the_token_from_stdin_with_a_dash(openbao: OpenBao) -> None:
    deployment = fresh_hash()

    code, out, err = _cli(
        ["vault", "store", "--deployment-hash", deployment, "--key", "status_panel_token", "--token", "-"],
        _env(openbao),
        stdin="from-stdin\n",
    )

    assert (code, out) == (0, "")
    assert openbao.read_token(f"agent/{deployment}/status_panel_token") == "from-stdin"


def test_cli_generate_prints_the_new_token_once_and_stores_it(openbao: OpenBao) -> None:
    deployment = fresh_hash()

    code, out, err = _cli(
        ["vault", "store", "--deployment-hash", deployment, "--key", "compose_agent_token", "--generate"],
        _env(openbao),
    )

    assert code == 0
    token = out.strip()
    assert out == f"{token}\n" and len(token) >= 40
    assert token not in err
    assert openbao.read_token(f"agent/{deployment}/compose_agent_token") == token


def test_cli_fetch_prints_only_the_token(openbao: OpenBao) -> None:
    deployment = fresh_hash()
    openbao.write_token(f"agent/{deployment}/status_panel_token", "fetch-me")

    code, out, err = _cli(
        ["vault", "fetch", "--deployment-hash", deployment, "--key", "status_panel_token"], _env(openbao)
    )

    assert (code, out, err) == (0, "fetch-me\n", "")


def test_cli_takes_hash_and_key_from_the_environment(openbao: OpenBao) -> None:
    deployment = fresh_hash()
    env = _env(openbao, DEPLOYMENT_HASH=deployment, VAULT_TOKEN_KEY="compose_agent_token")

    assert _cli(["vault", "store", "--token", "env-default"], env)[0] == 0
    assert openbao.read_token(f"agent/{deployment}/compose_agent_token") == "env-default"


@pytest.mark.parametrize(
    ("argv", "env_extra", "expected"),
    [
        (["vault", "fetch", "--key", "status_panel_token"], {}, "DEPLOYMENT_HASH"),
        (["vault", "fetch", "--deployment-hash", "abc"], {}, "--key"),
        (["vault", "fetch", "--deployment-hash", "abc", "--key", "status_panel_tokn"], {}, "unknown key"),
        (["vault", "fetch", "--deployment-hash", "missing0", "--key", "status_panel_token"], {}, "no secret at"),
        (
            ["vault", "fetch", "--deployment-hash", "abc", "--key", "status_panel_token"],
            {"VAULT_TOKEN": "not-the-root-token"},
            "permission denied",
        ),
    ],
)
def test_cli_errors_are_one_line_on_stderr_and_exit_1(
    openbao: OpenBao, argv: list[str], env_extra: dict[str, str], expected: str
) -> None:
    code, out, err = _cli(argv, {**_env(openbao), **env_extra})

    assert code == 1 and out == ""
    assert err.count("\n") == 1 and expected in err
    assert "not-the-root-token" not in err


def test_cli_an_empty_stdin_token_is_refused(openbao: OpenBao) -> None:
    code, _, err = _cli(
        ["vault", "store", "--deployment-hash", fresh_hash(), "--key", "status_panel_token", "--token", "-"],
        _env(openbao),
        stdin="\n",
    )

    assert code == 1 and "empty" in err


def test_the_real_compose_agent_vault_command_stores_and_fetches(openbao: OpenBao) -> None:
    deployment = fresh_hash()
    env = {"PATH": "/usr/bin:/bin", **_env(openbao)}
    base = [sys.executable, "-m", "gateway", "vault"]

    stored = subprocess.run(
        [*base, "store", "--deployment-hash", deployment, "--key", "status_panel_token", "--token", "-"],
        input="piped-token\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    fetched = subprocess.run(
        [*base, "fetch", "--deployment-hash", deployment, "--key", "status_panel_token"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )

    assert stored.returncode == 0, stored.stderr
    assert openbao.read_token(f"agent/{deployment}/status_panel_token") == "piped-token"
    assert (fetched.returncode, fetched.stdout) == (0, "piped-token\n")
