"""People: where they are kept (a private file, or Vault), how a running process follows them, passwords."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

import gateway.auth.people as people_module
from gateway.auth import passwords
from gateway.auth.documents import FileDocument, VaultDocument
from gateway.auth.passwords import hash_password, verify_password
from gateway.auth.people import People, PeopleAdmin, Person, share_people
from gateway.auth.scopes import ScopeSet
from gateway.auth.vault import VaultClient
from gateway.errors import InvalidInput
from tests.gateway.vault_fixtures import OpenBao, fresh_hash, openbao
from tests.polling import eventually

__all__ = ["openbao"]  # the fixture, imported for its tests

pytestmark = pytest.mark.anyio

PASSWORD = "correct horse battery staple"


def test_a_password_hash_is_salted_slow_scrypt_and_checks_only_its_password() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first != second  # salted
    scheme, n, r, p, _salt, _key = first.split("$")
    assert (scheme, int(n), int(r), int(p)) == ("scrypt", 2**15, 8, 3)
    assert PASSWORD not in first
    assert verify_password(PASSWORD, first) and verify_password(PASSWORD, second)
    assert not verify_password(PASSWORD + " ", first)
    for broken in ("", "scrypt$1$1$1$x$y", "bcrypt$2$8$1$aa$bb", first.replace("$8$", "$4096$"), "scrypt$a$b$c$d$e"):
        assert not verify_password(PASSWORD, broken)


def test_a_person_never_shows_their_password_hash() -> None:
    person = Person("alice", hash_password(PASSWORD), ())
    assert "scrypt" not in repr(person) and "scrypt" not in str(person)


async def test_the_people_file_is_private_and_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "state" / "people.json"
    admin = PeopleAdmin(FileDocument(path))
    await admin.add("alice", PASSWORD, ["compose:read", "compose:write:site"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    assert data["people"]["alice"]["grants"] == ["compose:read", "compose:write:site"]
    assert data["people"]["alice"]["password"].startswith("scrypt$")
    assert [p.name for p in await admin.list()] == ["alice"]
    # Nothing but the file itself and its lock is left in the folder (no half-written temporaries).
    assert sorted(p.name for p in path.parent.iterdir()) == [".people.json.lock", "people.json"]


def test_two_operators_adding_at_once_both_land(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "COMPOSE_AGENT_STATE_DIR": str(state), "CONFIG_PATH": str(tmp_path / "none.json")}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "gateway", "users", "add", name, "--password-stdin", "--grant", "compose:read"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for name in ("ann", "ben", "cat")
    ]
    for run in runs:
        _, err = run.communicate(f"{PASSWORD}\n".encode(), timeout=120)
        assert run.returncode == 0, err
    assert sorted(json.loads((state / "people.json").read_text())["people"]) == ["ann", "ben", "cat"]


async def test_a_running_process_sees_additions_grants_and_removals_within_seconds(tmp_path: Path) -> None:
    document = FileDocument(tmp_path / "people.json")
    admin = PeopleAdmin(document)
    people = People(document, interval=0.2)
    await people.load()
    assert len(people) == 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(people.watch_forever)
        await admin.add("dora", PASSWORD, ["compose:read"])
        await eventually(lambda: _async(people.get("dora") is not None), timeout=5, what="dora seen")
        await admin.grant("dora", "compose:write:site")
        await eventually(
            lambda: _async(people.scopes_of("dora") == ScopeSet.parse(["compose:read", "compose:write:site"])),
            timeout=5,
            what="the new grant seen",
        )
        await admin.remove("dora")
        await eventually(lambda: _async(people.get("dora") is None), timeout=5, what="dora gone")
        tg.cancel_scope.cancel()


async def _async(value: Any) -> Any:
    return value


async def test_a_bad_edit_keeps_the_last_good_people_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "people.json"
    await PeopleAdmin(FileDocument(path)).add("emil", PASSWORD, ["compose:read"])
    people = People(FileDocument(path), interval=0.1)
    await people.load()
    path.write_text("{ this is not json")
    with caplog.at_level(logging.WARNING, logger="gateway.auth.people"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(people.watch_forever)
            await eventually(lambda: _async("keeping the last good" in caplog.text), timeout=5, what="a warning")
            tg.cancel_scope.cancel()
    assert people.get("emil") is not None


async def test_login_checks_the_password_and_an_unknown_name_costs_a_check_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = FileDocument(tmp_path / "people.json")
    await PeopleAdmin(document).add("fay", PASSWORD, ["compose:read"])
    people = People(document)
    await people.load()
    checked: list[str] = []
    real = passwords.verify_password_async

    async def spy(password: str, encoded: str, limiter: anyio.CapacityLimiter) -> bool:
        checked.append(encoded)
        return await real(password, encoded, limiter)

    monkeypatch.setattr(people_module, "verify_password_async", spy)
    found = await people.authenticate("Fay", PASSWORD)  # a phone capitalises; names are lowercase
    assert found is not None and found.name == "fay"
    assert await people.authenticate("fay", PASSWORD + "x") is None
    assert await people.authenticate("nobody", PASSWORD) is None
    assert await people.authenticate("x" * 5000, PASSWORD) is None
    # Every attempt ran one scrypt check: the time taken does not tell a name that exists.
    assert len(checked) == 4 and checked[2] == checked[3] != checked[0]


async def test_the_operators_mistakes_are_refused_clearly(tmp_path: Path) -> None:
    admin = PeopleAdmin(FileDocument(tmp_path / "people.json"))
    await admin.add("gus", PASSWORD, [])
    cases = [
        (admin.add("gus", PASSWORD, []), "already a person named 'gus'"),
        (admin.add("Gus", PASSWORD, []), "not a person's name"),
        (admin.add("hal", "short", []), "too short"),
        (admin.add("hal", PASSWORD + "\n", []), "control characters"),
        (admin.add("hal", PASSWORD, ["compose:root"]), "unknown verb"),
        (admin.grant("nobody", "compose:read"), "no person named 'nobody'; people: gus"),
        (admin.revoke("gus", "compose:read"), "does not hold compose:read"),
        (admin.remove("nobody"), "no person named"),
    ]
    for call, says in cases:
        with pytest.raises(InvalidInput, match=says):
            await call
    assert [p.name for p in await admin.list()] == ["gus"]


def test_the_panel_gets_a_copy_only_while_there_are_people(tmp_path: Path) -> None:
    data = {"version": 1, "people": {"ida": {"password": "scrypt$x", "grants": [], "created": ""}}}
    path = share_people(tmp_path, data)
    assert path == tmp_path / "panel" / "people.json"
    assert json.loads(path.read_text()) == data and stat.S_IMODE(path.stat().st_mode) == 0o600
    share_people(tmp_path, {"version": 1, "people": {}})
    assert not path.exists()


@pytest.mark.vault
async def test_people_in_vault_are_kept_as_one_secret_and_followed(openbao: OpenBao) -> None:
    deployment = fresh_hash()
    client = VaultClient(openbao.address, openbao.root_token)
    try:
        document = VaultDocument(client, deployment, "people")
        admin = PeopleAdmin(document)
        people = People(document, interval=0.2)
        await people.load()
        async with anyio.create_task_group() as tg:
            tg.start_soon(people.watch_forever)
            # Several operators at once: check-and-set makes each change land on the one before.
            async with anyio.create_task_group() as writers:
                for name in ("jo", "kim", "lee"):
                    writers.start_soon(admin.add, name, PASSWORD, ["compose:read"])
            await eventually(lambda: _async(len(people) == 3), timeout=5, what="three people from Vault")
            await admin.remove("kim")
            await eventually(lambda: _async(people.get("kim") is None), timeout=5, what="kim gone")
            tg.cancel_scope.cancel()
        stored = openbao.request("GET", f"secret/data/agent/{deployment}/people")["data"]["data"]
        assert sorted(stored["people"]) == ["jo", "lee"]
        assert PASSWORD not in json.dumps(stored)
        assert await people.authenticate("jo", PASSWORD) is not None
    finally:
        client.close()
