"""The strict reading of a stack's files: every reference Compose follows, resolved as compose-go
resolves it, and nothing opened outside the stack folder.

No engine here; ``test_differential.py`` compares these readings with Compose's own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ComposeFailed, PolicyViolation
from gateway.policy.reader import Budget, Reading, ReadRefused, Unloadable, read_stack


def write(folder: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    stack = tmp_path / "stacks" / "shop"
    stack.mkdir(parents=True)
    return stack


def read(folder: Path, compose: str, files: dict[str, str] | None = None, **options: object) -> Reading:
    write(folder, {"compose.yaml": compose, **(files or {})})
    return read_stack(folder, [folder / "compose.yaml"], **options)  # type: ignore[arg-type]


def refs(reading: Reading) -> set[tuple[str, str | None, str]]:
    """(kind, service, path relative to the folder) of every resolved reference."""
    return {
        (ref.kind, ref.service, os.path.relpath(path, reading.folder))
        for ref in reading.references
        for path in ref.paths
    }


def test_every_kind_of_reference_is_found_and_resolved_where_compose_go_resolves_it(folder: Path) -> None:
    compose = """
include:
  - inc/one.yaml
  - path: [two/main.yaml, two/override.yaml]
    env_file: [two.env]
    project_directory: two/project
services:
  web:
    image: busybox
    env_file: [app.env, {path: optional.env, required: false}]
    label_file: web.labels
    extends: {file: bases/common.yaml, service: base}
secrets:
  token: {file: ./token.txt}
configs:
  conf: {file: conf/app.conf}
---
services:
  second:
    image: busybox
    env_file: second.env
"""
    files = {
        "inc/one.yaml": "services:\n  one:\n    image: busybox\n    env_file: one.env\n",
        "two/main.yaml": "services:\n  two:\n    image: busybox\n    label_file: two.labels\n",
        "two/override.yaml": "services: {}\n",
        "two.env": "X=1\n",
        "bases/common.yaml": "services:\n  base:\n    image: busybox\n    env_file: base.env\n"
        "    extends: {file: deeper/root.yaml, service: root}\n",
        "bases/deeper/root.yaml": "services:\n  root:\n    image: busybox\n",
        "app.env": "A=1\n",
        "web.labels": "a=b\n",
        "second.env": "S=1\n",
    }
    reading = read(folder, compose, files)
    assert refs(reading) == {
        (".env file", None, ".env"),
        ("compose file", None, "compose.yaml"),
        ("include", None, "inc/one.yaml"),
        (".env file", None, "inc/.env"),
        # an included file's references resolve in its project directory (its own folder by default)
        ("env_file", "one", "inc/one.env"),
        ("include", None, "two/main.yaml"),
        ("include", None, "two/override.yaml"),
        ("include env_file", None, "two.env"),
        ("include project_directory", None, "two/project"),
        ("label_file", "two", "two/project/two.labels"),
        ("env_file", "web", "app.env"),
        ("env_file", "web", "optional.env"),
        ("label_file", "web", "web.labels"),
        ("extends file", "web", "bases/common.yaml"),
        # an extended file's references resolve in its own folder, and so on down the chain
        ("env_file", "base", "bases/base.env"),
        ("extends file", "base", "bases/deeper/root.yaml"),
        ("secret file", None, "token.txt"),
        ("config file", None, "conf/app.conf"),
        ("env_file", "second", "second.env"),
    }
    read_files = {os.path.relpath(f.path, reading.folder) for f in reading.files}
    assert read_files == {
        "compose.yaml",
        "inc/one.yaml",
        "two/main.yaml",
        "two/override.yaml",
        "two.env",
        "bases/common.yaml",
        "bases/deeper/root.yaml",
        "app.env",
        "web.labels",
        "second.env",
    }
    # Absent files shape the model too (a .env that appears changes interpolation).
    assert {os.path.relpath(p, reading.folder) for p in reading.absent} >= {".env", "inc/.env", "optional.env"}


def test_an_extended_files_own_include_and_secrets_are_not_followed_as_compose_ignores_them(folder: Path) -> None:
    reading = read(
        folder,
        "services:\n  web:\n    extends: {file: common.yaml, service: base}\n",
        {"common.yaml": "include: [/etc/compose.yaml]\nsecrets:\n  s: {file: /etc/shadow}\n"
         "services:\n  base:\n    image: busybox\n"},
    )  # fmt: skip
    assert not any(ref.kind in ("include", "secret file") for ref in reading.references)


def opened_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every path the reader opens (the one place it opens files).

    A file is looked at through an ``O_PATH`` descriptor, then reopened through ``/proc/self/fd``:
    the path recorded for that reopening is the file the descriptor holds.
    """
    opened: list[str] = []
    real_open = os.open

    def recording_open(path: str, flags: int, *args: int, **kwargs: Any) -> int:
        name = str(path)
        opened.append(os.readlink(name) if name.startswith("/proc/self/fd/") else name)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    return opened


def test_a_reference_outside_the_folder_is_recorded_and_never_opened(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    write(outside, {"other.yaml": "services: {}\n", "secret.env": "X=1\n"})
    (folder / "link.env").parent.mkdir(parents=True, exist_ok=True)
    (folder / "link.env").symlink_to(outside / "secret.env")
    (folder / ".env").symlink_to(outside / "secret.env")
    opened = opened_paths(monkeypatch)
    reading = read(
        folder,
        f"include: [{outside}/other.yaml, ../../outside/other.yaml]\n"
        "services:\n  a:\n    image: busybox\n    env_file: [link.env, ../../outside/secret.env]\n",
    )
    assert opened and all(path.startswith(str(reading.folder) + "/") for path in opened), opened
    kinds = {(ref.kind, str(path)) for ref in reading.references for path in ref.paths}
    assert ("include", str(outside / "other.yaml")) in kinds
    assert ("env_file", str(folder / "link.env")) in kinds and (".env file", str(folder / ".env")) in kinds


def test_only_regular_files_are_read(folder: Path) -> None:
    os.mkfifo(folder / "app.env")
    with pytest.raises(ReadRefused) as caught:
        read(folder, "services:\n  a:\n    image: busybox\n    env_file: app.env\n")
    assert caught.value.code == "unreadable_file" and "not a regular file" in str(caught.value)


@pytest.mark.parametrize(
    ("compose", "code"),
    [
        ("services:\n  a:\n    env_file: !!str app.env\n", "yaml_tag"),
        ("services:\n  a:\n    env_file: !reset [app.env]\n", "yaml_tag"),
        ("services:\n  a:\n    env_file: [!override app.env]\n", "yaml_tag"),
        ("include: !override [x.yaml]\n", "yaml_tag"),
        ("services:\n  a:\n    extends: !override {file: x.yaml, service: b}\n", "yaml_tag"),
        ("secrets:\n  s: {file: !!str x}\n", "yaml_tag"),
        ("services:\n  a:\n    env_file: 0x10\n", "invalid_reference"),
        ("services:\n  a:\n    label_file: [true]\n", "invalid_reference"),
        ('services:\n  a:\n    env_file: "app\\x1b.env"\n', "control_characters"),
        ('services:\n  a:\n    env_file: "app\\u202e.env"\n', "control_characters"),
    ],
)
def test_a_file_key_read_any_other_way_than_as_a_plain_string_is_refused(folder: Path, compose: str, code: str) -> None:
    with pytest.raises(ReadRefused) as caught:
        read(folder, compose)
    assert caught.value.code == code


def test_tags_elsewhere_are_read(folder: Path) -> None:
    reading = read(folder, "services:\n  a: !override\n    image: !!str busybox\n    labels: !reset {}\n")
    assert reading.nodes > 0


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("${HOME}/x.env", "uses a variable"),
        ("~/.ssh/id_rsa", "starts with ~"),
        ("https://example.com/x.yaml", "remote reference"),
        ("oci://docker.io/x/y", "remote reference"),
        ("git@github.com:x/y.git", "remote reference"),
        ("github.com/x/y", "remote reference"),
        ("sub.git/compose.yaml", "remote reference"),
        ("C:/compose.yaml", "remote reference"),
    ],
)
def test_references_the_guard_cannot_place_are_kept_without_paths(folder: Path, value: str, problem: str) -> None:
    reading = read(folder, f"include: ['{value}']\nservices: {{}}\n")
    (ref,) = [ref for ref in reading.references if ref.kind == "include"]
    assert ref.paths == () and problem in ref.problem


@pytest.mark.parametrize(
    ("budget", "files", "what"),
    [
        (Budget(file_bytes=100), {"app.env": "X=" + "1" * 200 + "\n"}, "is 203 bytes"),
        (Budget(total_bytes=150), {"app.env": "X=" + "1" * 100 + "\n"}, "in all"),
        (Budget(files=1), {"app.env": "X=1\n"}, "more than 1 files"),
    ],
)
def test_size_and_file_budgets_are_checked_before_reading(
    folder: Path, budget: Budget, files: dict[str, str], what: str
) -> None:
    with pytest.raises(ReadRefused) as caught:
        read(folder, "services:\n  a:\n    image: busybox\n    env_file: app.env\n", files, budget=budget)
    assert caught.value.code == "yaml_budget" and what in str(caught.value)


def test_a_nul_byte_in_an_env_file_is_refused(folder: Path) -> None:
    (folder / "app.env").write_bytes(b"X=a\0b\n")
    with pytest.raises(ReadRefused) as caught:
        read(folder, "services:\n  a:\n    image: busybox\n    env_file: app.env\n")
    assert caught.value.code == "control_characters"


def test_a_compose_file_that_is_not_yaml_fails_as_composes_own_load_error_would(folder: Path) -> None:
    with pytest.raises(Unloadable) as caught:
        read(folder, "services:\n  a: [unclosed\n")
    assert isinstance(caught.value, ComposeFailed) and not isinstance(caught.value, PolicyViolation)
    assert "compose.yaml is not valid YAML (read before Compose runs)" in str(caught.value)


def test_a_candidate_is_read_from_its_bytes_as_if_it_sat_in_the_folder(folder: Path) -> None:
    write(folder, {"compose.yaml": "services: {}\n", "app.env": "A=1\n"})
    reading = read_stack(
        folder,
        [folder / "compose.yaml"],
        sources={
            folder / "compose.yaml": b"services:\n  a:\n    image: busybox\n    env_file: app.env\n",
            folder / ".env": b"COMPOSE_BAKE=1\n",
        },
    )
    assert ("env_file", "a", "app.env") in refs(reading)
    assert reading.dotenv_names == ("COMPOSE_BAKE",)


def test_the_digest_binds_every_file_read_and_every_file_found_absent(folder: Path) -> None:
    compose = "include: [inc/x.yaml]\nservices: {}\n"
    files = {"inc/x.yaml": "services:\n  a:\n    image: busybox\n    env_file: a.env\n", "inc/a.env": "A=1\n"}
    first = read(folder, compose, files).digest
    assert read_stack(folder, [folder / "compose.yaml"]).digest == first
    (folder / "inc/a.env").write_text("A=2\n")
    second = read_stack(folder, [folder / "compose.yaml"]).digest
    assert second != first
    (folder / "inc/.env").write_text("B=1\n")
    assert read_stack(folder, [folder / "compose.yaml"]).digest not in (first, second)


def test_a_signature_is_taken_on_the_descriptor_the_bytes_came_from(folder: Path) -> None:
    reading = read(folder, "services: {}\n")
    (compose,) = [f for f in reading.files if f.kind == "compose file"]
    st = os.stat(folder / "compose.yaml")
    assert compose.signature == (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def iter_lines(reading: Reading) -> Iterator[str]:
    yield from (f"{ref.kind} {ref.value}" for ref in reading.references)


def test_dotenv_names_are_collected_for_the_steering_check(folder: Path) -> None:
    reading = read(folder, "services: {}\n", {".env": "# c\nexport COMPOSE_PROFILES=x\nTAG: 1\n  NAME=v\n"})
    assert reading.dotenv_names == ("COMPOSE_PROFILES", "TAG", "NAME")
