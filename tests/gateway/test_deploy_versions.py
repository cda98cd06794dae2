"""The version store on a real file system: numbering, the current pointer, pruning, atomic installs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.deploy.versions import STATE_DIRNAME, Snapshot, VersionStore
from gateway.errors import InvalidInput
from gateway.stacks import discover_stacks


def snap(text: str, env: str | None = None) -> Snapshot:
    return Snapshot(text.encode(), None if env is None else env.encode())


def test_versions_are_numbered_in_order_and_read_back_exactly(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    first = store.record("shop", snap("services: {a: {image: x}}\n", "A=1\n"), source="deploy", caller="agent")
    second = store.record("shop", snap("services: {b: {image: y}}\n"), source="deploy", caller="agent")
    assert (first, second) == (1, 2)
    assert store.read("shop", 1) == snap("services: {a: {image: x}}\n", "A=1\n")
    assert store.read("shop", 2).env is None
    history = store.history("shop")
    assert [m.version for m in history] == [1, 2]
    assert history[0].sha256 == snap("services: {a: {image: x}}\n").sha256 and history[0].caller == "agent"
    assert store.current("shop") is None  # recording does not make a version current
    store.set_current("shop", 2)
    assert store.current("shop") == 2


def test_reading_a_missing_version_names_the_kept_ones(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    store.record("shop", snap("a"), source="deploy", caller="x")
    with pytest.raises(InvalidInput, match="no version 7; kept versions: 1"):
        store.read("shop", 7)


def test_pruning_keeps_the_newest_versions_and_never_the_current_one(tmp_path: Path) -> None:
    store = VersionStore(tmp_path, keep=3)
    store.record("shop", snap("v1"), source="deploy", caller="x")
    store.set_current("shop", 1)  # rolled back to the oldest: it must survive any pruning
    for n in range(2, 7):
        store.record("shop", snap(f"v{n}"), source="deploy", caller="x")
    assert [m.version for m in store.history("shop")] == [1, 5, 6]
    assert store.read("shop", 1).compose == b"v1"


def test_versions_and_scratch_folders_are_private_and_hidden_from_discovery(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    store.record("shop", snap("services: {}\n", "PASSWORD=x\n"), source="deploy", caller="x")
    scratch = store.make_scratch("shop")
    (tmp_path / STATE_DIRNAME / "compose.yaml").write_text("services: {}\n")  # even with a compose file in it
    for folder in (tmp_path / STATE_DIRNAME, tmp_path / STATE_DIRNAME / "versions" / "shop" / "1", scratch):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    env_copy = tmp_path / STATE_DIRNAME / "versions" / "shop" / "1" / ".env"
    assert stat.S_IMODE(env_copy.stat().st_mode) == 0o600
    assert discover_stacks(tmp_path) == {}
    store.remove_scratch(scratch)
    assert not scratch.exists()


def test_a_new_stack_folder_appears_whole(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    path = store.install("shop", snap("services: {}\n", "A=1\n"))
    assert path == tmp_path / "shop" / "compose.yaml"
    assert path.read_text() == "services: {}\n" and (tmp_path / "shop" / ".env").read_text() == "A=1\n"
    assert stat.S_IMODE((tmp_path / "shop" / ".env").stat().st_mode) == 0o600
    assert sorted(p.name for p in (tmp_path / STATE_DIRNAME / "tmp").iterdir()) == []  # the staging folder moved


def test_an_existing_stack_keeps_its_folder_and_other_files_and_gets_its_files_replaced(tmp_path: Path) -> None:
    folder = tmp_path / "shop"
    (folder / "site").mkdir(parents=True)
    (folder / "site" / "index.html").write_text("hello")
    (folder / "docker-compose.yml").write_text("old\n")
    (folder / ".env").write_text("OLD=1\n")
    inode = folder.stat().st_ino
    store = VersionStore(tmp_path)
    assert store.on_disk(folder) == (folder / "docker-compose.yml", snap("old\n", "OLD=1\n"))

    path = store.install("shop", snap("new\n"))

    assert path == folder / "docker-compose.yml"  # the file the stack already used, not a second one
    assert path.read_text() == "new\n"
    assert not (folder / ".env").exists()  # a snapshot without .env removes it
    assert (folder / "site" / "index.html").read_text() == "hello"
    assert folder.stat().st_ino == inode  # bind mounts of the folder keep pointing at it
    assert sorted(os.listdir(folder)) == ["docker-compose.yml", "site"]  # no temporary file left behind
