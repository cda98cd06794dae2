"""``compose-agent users`` as the operator runs it: a real process, exit codes, help, no password echoed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gateway.oauth_fixtures import PASSWORD, run_users
from tests.gateway.vault_fixtures import OpenBao, fresh_hash, openbao

__all__ = ["openbao"]


def test_the_whole_life_of_a_person(tmp_path: Path) -> None:
    state = tmp_path / "state"
    added = run_users(
        state, "add", "alice", "--password-stdin", "--grant", "compose:read", "--grant", "compose:write:site",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "added alice" in added.stderr and "compose:write:site: may bring up" in added.stderr
    listed = run_users(state, "list")
    assert listed.returncode == 0 and listed.stdout.startswith("alice\tcompose:read compose:write:site\t")
    assert run_users(state, "grant", "alice", "compose:deploy:edge/site").returncode == 0
    again = run_users(state, "grant", "alice", "compose:deploy:edge/site")
    assert again.returncode == 0 and "already holds" in again.stderr
    assert run_users(state, "revoke", "alice", "compose:read").returncode == 0
    as_json = json.loads(run_users(state, "list", "--json").stdout)
    assert as_json["people"][0]["grants"] == ["compose:write:site", "compose:deploy:edge/site"]
    changed = run_users(state, "passwd", "alice", "--password-stdin", stdin="another long password\n")
    assert changed.returncode == 0, changed.stderr
    removed = run_users(state, "remove", "alice")
    assert removed.returncode == 0 and "stop working within seconds" in removed.stderr
    empty = run_users(state, "list")
    assert empty.returncode == 0 and empty.stdout == "" and "no people yet" in empty.stderr
    for done in (added, listed, again, changed, removed):
        assert PASSWORD not in done.stdout + done.stderr and "scrypt$" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        (["add", "bob", "--password-stdin"], "short\n", "too short: use at least 12 characters"),
        (["add", "Bob", "--password-stdin"], PASSWORD + "\n", "is not a person's name"),
        (["add", "bob", "--password-stdin", "--grant", "compose:everything"], PASSWORD + "\n", "unknown verb"),
        (["add", "bob"], "", "give the password on stdin with --password-stdin"),
        (["grant", "nobody", "compose:read"], None, "there is no person named 'nobody'"),
        (["revoke", "nobody", "compose:read"], None, "there is no person named 'nobody'"),
        (["remove", "nobody"], None, "there is no person named 'nobody'"),
    ],
)
def test_a_refusal_exits_1_with_one_line_saying_why(
    tmp_path: Path, args: list[str], stdin: str | None, says: str
) -> None:
    done = run_users(tmp_path / "state", *args, stdin=stdin)
    assert done.returncode == 1
    assert done.stderr.startswith(f"compose-agent users {args[0]}: error: ") and says in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_a_person_already_there_is_not_replaced(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert run_users(state, "add", "cy", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    before = (state / "people.json").read_text()
    twice = run_users(state, "add", "cy", "--password-stdin", stdin="a different password\n")
    assert twice.returncode == 1 and "already a person named 'cy'" in twice.stderr
    assert (state / "people.json").read_text() == before


@pytest.mark.parametrize(
    "args",
    [["users", "--help"], ["users", "add", "--help"], ["users", "grant", "--help"], ["users", "remove", "--help"]],
)
def test_every_command_has_help(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage: compose-agent users" in done.stdout


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    assert run_users(tmp_path, "frobnicate").returncode == 2
    assert run_users(tmp_path, "grant", "only-a-name").returncode == 2


@pytest.mark.vault
def test_with_vault_configured_people_are_kept_in_vault(tmp_path: Path, openbao: OpenBao) -> None:
    deployment = fresh_hash()
    env = {"VAULT_ADDRESS": openbao.address, "VAULT_TOKEN": openbao.root_token, "DEPLOYMENT_HASH": deployment}
    done = run_users(tmp_path / "state", "add", "dee", "--password-stdin", "--grant", "compose:read",
                     stdin=PASSWORD + "\n", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"secret/agent/{deployment}/people in Vault at {openbao.address}" in done.stderr
    assert not (tmp_path / "state" / "people.json").exists()
    stored = openbao.request("GET", f"secret/data/agent/{deployment}/people")["data"]["data"]
    assert stored["people"]["dee"]["grants"] == ["compose:read"] and PASSWORD not in json.dumps(stored)
    listed = run_users(tmp_path / "state", "list", env=env)
    assert listed.stdout.startswith("dee\tcompose:read")
    missing = run_users(tmp_path / "state", "list", env={k: v for k, v in env.items() if k != "DEPLOYMENT_HASH"})
    assert missing.returncode == 1 and "DEPLOYMENT_HASH" in missing.stderr
    assert os.environ.get("VAULT_TOKEN") != openbao.root_token  # the test's own settings stayed local
