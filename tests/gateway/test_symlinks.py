"""The stacks folder is not a path to the host: every attack through it, through the real gateway.

Each attack plants a real link, hard link, FIFO or device node in a stack folder or in the
gateway's state folder, pointing at a marker folder outside the stacks dir. Then every tool that
touches those files is called through the SDK's in-memory client (and ``plan`` also with the
panel's token on a served gateway, and in read-only mode), with real Compose and a real engine.
Afterwards the marker folder is exactly as it was (nothing written or deleted), no answer holds
its marker, and no file of it was opened by the gateway for reading or writing (every ``open``
in the process is watched and checked by inode).
"""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from gateway.deploy.versions import STATE_DIRNAME, Snapshot, VersionStore
from gateway.mcp.server import build_server
from gateway.operations import ComposeOperations
from tests.conftest import StackFactory
from tests.gateway.conftest import GatewayProcess
from tests.gateway.test_folders import snapshot_tree

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

MARKER = "HOST-FILE-MARKER-51c9"
SERVICE = "services:\n  a:\n    image: {image}\n    init: true\n    command: ['sleep', '3600']\n"
# Called in this order: the ones that can change the stack come last, so each sees the attack as planted.
TOOLS = ("versions", "config", "plan_now", "plan", "rollback", "up", "deploy")
ALL = frozenset(TOOLS)
ON_DISK = ALL - {"versions"}


@dataclass(frozen=True)
class Attack:
    id: str
    plant: Callable[[Path, str, Path], None]  # (stacks dir, project, host folder)
    refused_by: frozenset[str]


def _state(root: Path, project: str, *parts: str) -> Path:
    return root.joinpath(STATE_DIRNAME, "versions", project, *parts)


def _link(entry: Path, target: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.copytree(entry, target, dirs_exist_ok=True, symlinks=True)  # the same tree, outside
        shutil.rmtree(entry)
    elif entry.exists() or entry.is_symlink():
        entry.unlink()
    entry.symlink_to(target)


def _replace(entry: Path, make: Callable[[Path], None]) -> None:
    entry.unlink()
    make(entry)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _zero(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))


ATTACKS = [
    Attack("stack_folder_link", lambda r, p, h: _link(r / p, h / "stack"), ALL),
    Attack("compose_link", lambda r, p, h: _link(r / p / "compose.yaml", h / "compose.yaml"), ON_DISK),
    Attack("env_link", lambda r, p, h: _link(r / p / ".env", h / "secret.env"), ON_DISK),
    Attack("env_hard_link", lambda r, p, h: _replace(r / p / ".env", lambda e: os.link(h / "secret.env", e)), ON_DISK),
    Attack(
        "compose_hard_link",
        lambda r, p, h: _replace(r / p / "compose.yaml", lambda e: os.link(h / "compose.yaml", e)),
        ON_DISK,
    ),
    Attack("env_fifo", lambda r, p, h: _replace(r / p / ".env", _fifo), ON_DISK),
    Attack("env_device", lambda r, p, h: _replace(r / p / ".env", _zero), ON_DISK),
    # A compose.yaml that is a FIFO is no stack at all for config and up (not found), and refused by the rest.
    Attack("compose_fifo", lambda r, p, h: _replace(r / p / "compose.yaml", _fifo), ON_DISK),
    Attack(
        "state_folder_link",
        lambda r, p, h: _link(r / STATE_DIRNAME, h / "state"),
        frozenset({"versions", "plan_now", "plan", "rollback", "deploy"}),
    ),
    Attack(
        "state_folder_of_another_user",
        lambda r, p, h: os.chown(r / STATE_DIRNAME, 65534, 65534),
        frozenset({"versions", "plan_now", "plan", "rollback", "deploy"}),
    ),
    Attack(
        "tmp_link",
        lambda r, p, h: _link(r / STATE_DIRNAME / "tmp", h / "tmp"),
        frozenset({"plan", "rollback", "deploy"}),
    ),
    Attack(
        "versions_link",
        lambda r, p, h: _link(_state(r, p), h / "versions"),
        frozenset({"versions", "plan_now", "plan", "rollback", "deploy"}),
    ),
    Attack(
        "version_folder_link",
        lambda r, p, h: _link(_state(r, p, "1"), h / "version"),
        frozenset({"versions", "plan_now", "plan", "rollback", "deploy"}),
    ),
    Attack(
        "version_env_link", lambda r, p, h: _link(_state(r, p, "1", ".env"), h / "secret.env"), frozenset({"rollback"})
    ),
    Attack(
        "version_env_hard_link",
        lambda r, p, h: _replace(_state(r, p, "1", ".env"), lambda e: os.link(h / "secret.env", e)),
        frozenset({"rollback"}),
    ),
    Attack(
        "version_meta_link",
        lambda r, p, h: _link(_state(r, p, "1", "meta.json"), h / "meta.json"),
        frozenset({"versions", "rollback"}),
    ),
    Attack(
        "current_link",
        lambda r, p, h: _link(_state(r, p, "current"), h / "current"),
        frozenset({"versions", "plan_now", "plan", "rollback", "deploy"}),
    ),
]


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A marker folder outside the stacks dir, holding what every attack points at."""
    folder = tmp_path / "host"
    (folder / "stack").mkdir(parents=True)
    (folder / "stack" / "compose.yaml").write_text(
        f"services:\n  a:\n    image: busybox\n    command: ['{MARKER}']\n    volumes: ['./:/host']\n"
    )
    (folder / "secret.env").write_text(f"MARKER={MARKER}\n")
    (folder / "compose.yaml").write_text(f"services:\n  a:\n    image: busybox\n    command: ['{MARKER}']\n")
    (folder / "meta.json").write_text(json.dumps({"created": "x", "sha256": "x", "source": "x", "caller": MARKER}))
    (folder / "current").write_text("1\n")
    (folder / "tmp" / "old-folder").mkdir(parents=True)
    (folder / "tmp" / "old-folder" / "data").write_text(MARKER)
    os.utime(folder / "tmp" / "old-folder", (1, 1))  # what a sweep of stale scratch folders would delete
    return folder


def baseline(stacks: StackFactory) -> str:
    """A stack with a .env and two kept versions, the second on disk."""
    first = SERVICE.format(image=stacks.image).replace("3600", "3601")
    project = stacks.make(SERVICE, files={".env": "A=1\n"})
    store = VersionStore(stacks.root)
    store.record(project, Snapshot(first.encode(), b"A=0\n"), source="deploy", caller="test")
    on_disk = VersionStore.on_disk(stacks.root / project)
    assert on_disk is not None
    store.record(project, on_disk[1], source="deploy", caller="test")
    store.set_current(project, 2)
    return project


@contextmanager
def watching_opens(host: Path) -> Iterator[list[str]]:
    """Every file or folder of ``host`` the process opens for reading or writing (by inode: links and
    hard links included). An ``O_PATH`` look, which reads nothing, is not an open."""
    inodes = {}
    for dirpath, dirnames, filenames in os.walk(host):
        for name in [".", *dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            inodes[(st.st_dev, st.st_ino)] = os.path.join(dirpath, name)
    touched: list[str] = []
    real_os_open, real_io_open = os.open, io.open

    def note(fd: int, path: object) -> None:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) in inodes:
            touched.append(f"{path} -> {inodes[(st.st_dev, st.st_ino)]}")

    def os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        fd = real_os_open(path, flags, *args, **kwargs)
        if not flags & getattr(os, "O_PATH", 0):
            note(fd, path)
        return fd

    def io_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        handle = real_io_open(file, *args, **kwargs)
        note(handle.fileno(), file)
        return handle

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "open", os_open)
        patch.setattr(io, "open", io_open)
        patch.setattr(builtins, "open", io_open)
        yield touched


async def call(client: Client, tool: str, project: str, image: str) -> CallToolResult:
    compose = SERVICE.format(image=image)
    arguments: dict[str, Any] = {"project": project}
    if tool in ("plan", "deploy"):
        arguments["compose_yaml"] = compose
    return await client.call_tool("plan" if tool == "plan_now" else tool, arguments)


def text_of(result: CallToolResult) -> str:
    return json.dumps([c.model_dump() for c in result.content]) + json.dumps(result.structured_content)


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.id)
async def test_each_attack_through_the_stacks_folder_is_refused_and_nothing_outside_is_touched(
    ops: ComposeOperations, stacks: StackFactory, host: Path, attack: Attack
) -> None:
    project = baseline(stacks)
    attack.plant(stacks.root, project, host)
    before = snapshot_tree(host)
    refused: dict[str, str] = {}
    async with Client(build_server(ops)) as client:
        with watching_opens(host) as touched:
            for tool in TOOLS:
                result = await call(client, tool, project, stacks.image)
                assert MARKER not in text_of(result), (tool, result)
                if result.is_error:
                    refused[tool] = result.content[0].text  # type: ignore[union-attr]
    assert touched == []
    assert snapshot_tree(host) == before
    assert set(refused) == attack.refused_by, refused
    for tool, message in refused.items():
        if tool not in ("config", "up"):  # those two are the guard's refusals (it may say where a link points)
            assert f"stack '{project}' is refused: " in message and str(host) not in message, (tool, message)


async def test_the_panel_token_cannot_make_plan_delete_host_folders_through_a_linked_tmp(
    gateway: GatewayProcess, ops: ComposeOperations, stacks: StackFactory, host: Path
) -> None:
    project = baseline(stacks)
    _link(stacks.root / STATE_DIRNAME / "tmp", host / "tmp")
    before = snapshot_tree(host)
    compose = SERVICE.format(image=stacks.image)
    async with httpx2.AsyncClient(headers=gateway.headers(gateway.panel_token), timeout=60) as http:
        async with streamable_http_client(gateway.url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as panel:
                await panel.initialize()
                served = await panel.call_tool("plan", {"project": project, "compose_yaml": compose})
    async with Client(build_server(ops, read_only=True)) as client:
        read_only = await client.call_tool("plan", {"project": project, "compose_yaml": compose})
    for result in (served, read_only):
        assert result.is_error
        assert f"stack '{project}' is refused: .compose-agent/tmp is a symbolic link" in text_of(result)
    assert snapshot_tree(host) == before


@pytest.mark.parametrize("moment", ["after the guard", "before the install"])
async def test_a_stack_folder_swapped_for_a_link_during_deploy_gets_nothing_written_through_it(
    ops: ComposeOperations, stacks: StackFactory, host: Path, moment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = baseline(stacks)
    folder = stacks.root / project

    def swap() -> None:
        os.rename(folder, stacks.root / "moved")
        folder.symlink_to(host / "stack")

    if moment == "after the guard":
        judged = ops.planner.judged

        async def judged_then_swap(*args: Any, **kwargs: Any) -> Any:
            verdict = await judged(*args, **kwargs)
            swap()
            return verdict

        monkeypatch.setattr(ops.planner, "judged", judged_then_swap)
    else:
        install = ops.deployer.store.install

        def swap_then_install(*args: Any, **kwargs: Any) -> Path:
            swap()
            return install(*args, **kwargs)

        monkeypatch.setattr(ops.deployer.store, "install", swap_then_install)
    before, aside = snapshot_tree(host), snapshot_tree(folder)
    compose = SERVICE.format(image=stacks.image).replace("3600", "3602")
    async with Client(build_server(ops)) as client:
        with watching_opens(host) as touched:
            result = await client.call_tool("deploy", {"project": project, "compose_yaml": compose})
    assert result.is_error and f"stack '{project}' is refused: {project} is a symbolic link" in text_of(result)
    assert touched == []
    assert snapshot_tree(host) == before
    moved = snapshot_tree(stacks.root / "moved")
    assert moved["compose.yaml"] == aside["compose.yaml"] and moved[".env"] == aside[".env"]


async def test_a_fifo_in_a_stack_folder_holds_no_thread_and_denies_service_only_to_its_stack(
    ops: ComposeOperations, stacks: StackFactory
) -> None:
    # The catalog's swarm-target probe once read .env with a plain open: a FIFO held the worker
    # thread for good, and each listing took one more, until no thread was left for anyone.
    fifo = stacks.make(SERVICE)
    (stacks.root / fifo / ".env").unlink(missing_ok=True)
    os.mkfifo(stacks.root / fifo / ".env")
    other = stacks.make(SERVICE)
    async with Client(build_server(ops)) as client:
        with anyio.fail_after(60):
            for _ in range(45):  # past anyio's default of 40 worker threads
                listed = await client.call_tool("list_stacks", {})
                ps = await client.call_tool("ps", {"project": fifo})
    assert not listed.is_error and not ps.is_error
    assert listed.structured_content is not None and ps.structured_content is not None
    marks = {s["name"]: s["policy"] for s in listed.structured_content["stacks"]}
    assert marks[other] is not None and marks[other]["allowed"]
    assert marks[fifo] is not None and not marks[fifo]["allowed"] and "FIFO" in marks[fifo]["error"]
