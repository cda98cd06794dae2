"""The stacks dir opened by descriptor (gateway/folders.py and the version store), on a real file system.

Each attack is a real link, hard link, FIFO or device node, and the races are real: a thread swaps
a folder for a link (``renameat2(RENAME_EXCHANGE)``, atomic) while the gateway's code runs, and a
marker folder outside the stacks dir must come out exactly as it went in.
"""

from __future__ import annotations

import ctypes
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.deploy.versions import STATE_DIRNAME, Snapshot, VersionStore, sha256_hex
from gateway.errors import GatewayError, PolicyViolation
from gateway.folders import Folder, NotFollowed, NotRegular, open_regular, read_regular
from gateway.policy.reader import ReadRefused, read_stack
from gateway.stacks import discover_stacks, find_stack

MARKER = "HOST-FILE-MARKER-7f3a"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def snapshot_tree(root: Path) -> dict[str, Any]:
    """Every entry under ``root``: its kind, its bytes or link target, its mtime; nothing followed."""
    found: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                found[str(path.relative_to(root))] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                found[str(path.relative_to(root))] = ("file", path.read_bytes(), st.st_mtime_ns)
            else:
                found[str(path.relative_to(root))] = ("dir", st.st_mtime_ns)
    return found


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A folder outside the stacks dir: a secret, a compose file, and an old folder a sweep would delete."""
    folder = tmp_path / "host"
    (folder / "old" / "keep").mkdir(parents=True)
    (folder / "old" / "keep" / "data").write_text(MARKER)
    (folder / "secret.env").write_text(f"MARKER={MARKER}\n")
    (folder / "compose.yaml").write_text(f"services: {{a: {{image: busybox, command: {MARKER}}}}}\n")
    os.utime(folder / "old", (1, 1))  # older than any sweep's cut-off
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "stacks"
    folder.mkdir()
    return folder


def make_stack(root: Path, name: str = "web", env: str | None = "A=1\n") -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "compose.yaml").write_text("services: {a: {image: busybox}}\n")
    if env is not None:
        (folder / ".env").write_text(env)
    return folder


def test_only_a_regular_file_with_one_name_is_opened(root: Path, host: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_stack(root)
    (folder / "link.env").symlink_to(host / "secret.env")
    os.link(host / "secret.env", folder / "hard.env")
    os.mkfifo(folder / "fifo.env")
    os.mknod(folder / "zero.env", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero
    opened: list[tuple[str, int]] = []
    real_open = os.open

    def recording_open(path: str, flags: int, *args: Any, **kwargs: Any) -> int:
        opened.append((str(path), flags))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    expected = {
        "link.env": "a symbolic link",
        "hard.env": "a file with 2 hard links",
        "fifo.env": "not a regular file (a FIFO)",
        "zero.env": "not a regular file (a character device)",
    }
    for name, what in expected.items():
        with pytest.raises(NotRegular) as caught:
            open_regular(folder / name)
        assert caught.value.strerror == what
    assert read_regular(folder / ".env", limit=100) == b"A=1\n"
    # The FIFO and the device were looked at through O_PATH, never opened for reading.
    for name in ("fifo.env", "zero.env"):
        flags = [f for path, f in opened if path.endswith(name)]
        assert flags and all(f & os.O_PATH for f in flags), (name, flags)


def test_a_folder_is_walked_one_step_at_a_time_and_a_link_at_any_step_is_refused(root: Path, host: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "c").symlink_to(host)
    top = Folder.stacks_dir(root, "web")
    assert top is not None
    with top:
        with top.opened("a", "b") as inner:
            assert inner is not None and inner.shown == "a/b"
        with top.opened("a", "missing") as missing:
            assert missing is None
        with pytest.raises(NotFollowed) as caught:
            top.down("a", "c", "old")
        assert str(caught.value).startswith("stack 'web' is refused: a/c is a symbolic link, not a folder")
        assert str(host) not in str(caught.value)
        with top.opened("x", "y", create=True) as made:
            assert made is not None
        assert stat.S_IMODE((root / "x" / "y").stat().st_mode) == 0o700


def test_remove_and_replace_act_on_the_entry_never_on_what_a_link_points_at(root: Path, host: Path) -> None:
    before = snapshot_tree(host)
    folder = make_stack(root)
    (folder / "tree").mkdir()
    (folder / "tree" / "host").symlink_to(host)
    (folder / "tree" / "old").symlink_to(host / "old")
    (folder / "gone").symlink_to(host / "old")
    (folder / ".env").unlink()
    (folder / ".env").symlink_to(host / "secret.env")
    top = Folder.stacks_dir(root, "web")
    assert top is not None
    with top, top.opened("web") as stack:
        assert stack is not None
        stack.remove("tree")
        stack.remove("gone")
        stack.replace(".env", b"B=2\n", mode=0o600)
        with pytest.raises(FileExistsError):
            stack.write("compose.yaml", b"x", mode=0o600)  # O_EXCL: never over what is there
    assert snapshot_tree(host) == before
    assert sorted(os.listdir(folder)) == [".env", "compose.yaml"]
    assert not (folder / ".env").is_symlink() and (folder / ".env").read_text() == "B=2\n"


def test_discovery_lists_no_linked_stack_folder_and_naming_one_is_refused(root: Path, host: Path) -> None:
    make_stack(root, "real")
    (host / "stack").mkdir()
    (host / "stack" / "compose.yaml").write_text("services: {}\n")
    (root / "linked").symlink_to(host / "stack")
    assert set(discover_stacks(root)) == {"real"}
    with pytest.raises(PolicyViolation) as caught:
        find_stack(root, "linked")
    assert "stack 'linked' is refused" in str(caught.value) and str(host) not in str(caught.value)
    (root / "file").write_text("not a folder")
    assert find_stack(root, "file") is None


def test_the_reader_refuses_a_linked_stack_folder_and_reads_no_file_with_two_names(root: Path, host: Path) -> None:
    (root / "linked").symlink_to(host)
    with pytest.raises(ReadRefused, match="stack folder linked is a symbolic link"):
        read_stack(root / "linked", [root / "linked" / "compose.yaml"])
    folder = make_stack(root, env=None)
    os.link(host / "secret.env", folder / ".env")
    with pytest.raises(ReadRefused, match="cannot read .env: a file with 2 hard links"):
        read_stack(folder, [folder / "compose.yaml"])


@pytest.mark.parametrize(
    ("attack", "refused"),
    [
        ("folder", "web is a symbolic link, not a folder"),
        ("compose", "web/compose.yaml is a symbolic link"),
        ("env", "web/.env is a symbolic link"),
        ("env_hard", "web/.env is a file with 2 hard links"),
        ("env_fifo", "web/.env is not a regular file (a FIFO)"),
        ("env_device", "web/.env is not a regular file (a character device)"),
    ],
)
def test_the_files_on_disk_are_never_read_through_a_link_or_from_a_special_file(
    root: Path, host: Path, attack: str, refused: str
) -> None:
    folder = make_stack(root)
    if attack == "folder":
        os.rename(folder, root / "moved")
        folder.symlink_to(host)
    elif attack == "compose":
        (folder / "compose.yaml").unlink()
        (folder / "compose.yaml").symlink_to(host / "compose.yaml")
    else:
        (folder / ".env").unlink()
        if attack == "env":
            (folder / ".env").symlink_to(host / "secret.env")
        elif attack == "env_hard":
            os.link(host / "secret.env", folder / ".env")
        elif attack == "env_fifo":
            os.mkfifo(folder / ".env")
        else:
            os.mknod(folder / ".env", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    with pytest.raises(NotFollowed) as caught:
        VersionStore.on_disk(folder)
    assert str(caught.value).startswith(f"stack 'web' is refused: {refused}")
    assert MARKER not in str(caught.value) and str(host) not in str(caught.value)


@pytest.mark.parametrize(
    ("link", "refused"),
    [
        ((STATE_DIRNAME,), ".compose-agent is a symbolic link"),
        ((STATE_DIRNAME, "tmp"), ".compose-agent/tmp is a symbolic link"),
        ((STATE_DIRNAME, "versions", "web"), ".compose-agent/versions/web is a symbolic link"),
        ((STATE_DIRNAME, "versions", "web", "1"), ".compose-agent/versions/web/1 is a symbolic link"),
        ((STATE_DIRNAME, "versions", "web", "1", ".env"), ".compose-agent/versions/web/1/.env is a symbolic link"),
        ((STATE_DIRNAME, "versions", "web", "current"), ".compose-agent/versions/web/current is a symbolic link"),
    ],
)
def test_a_link_in_the_state_folder_is_refused_and_nothing_outside_is_read_written_or_deleted(
    root: Path, host: Path, link: tuple[str, ...], refused: str
) -> None:
    store = VersionStore(root)
    make_stack(root)
    store.record("web", Snapshot(b"services: {}\n", b"A=1\n"), source="deploy", caller="x")
    store.set_current("web", 1)
    store.make_scratch("web")
    entry = root.joinpath(*link)
    target = {".env": host / "secret.env", "current": host / "secret.env"}.get(link[-1], host)
    os.rename(entry, root / "moved-aside")
    entry.symlink_to(target)
    before = snapshot_tree(host)
    calls: dict[str, Callable[[], object]] = {
        "history": lambda: store.history("web"),
        "read": lambda: store.read("web", 1),
        "current": lambda: store.current("web"),
        "scratch": lambda: store.make_scratch("web", {"compose.yaml": b"x"}),
        "record": lambda: store.record("web", Snapshot(b"y", None), source="deploy", caller="x"),
        "set_current": lambda: store.set_current("web", 1),
    }
    outcomes = {}
    for name, call in calls.items():
        try:
            outcomes[name] = call()
        except NotFollowed as exc:
            assert str(exc).startswith(f"stack 'web' is refused: {refused}"), exc
            outcomes[name] = "refused"
    assert snapshot_tree(host) == before
    # What goes through the link is refused; nothing is read from it either way.
    through = {
        ".compose-agent": set(calls),
        "tmp": {"scratch", "record"},
        "web": {"history", "read", "current", "record", "set_current"},
        "1": {"history", "read", "record"},
        ".env": {"read"},
        "current": {"current"},
    }[link[-1]]
    assert {name for name, outcome in outcomes.items() if outcome == "refused"} >= through
    assert MARKER not in repr(outcomes)


def test_a_state_folder_someone_else_can_write_is_refused(root: Path) -> None:
    store = VersionStore(root)
    store.record("web", Snapshot(b"a", None), source="deploy", caller="x")
    os.chmod(root / STATE_DIRNAME, 0o777)
    with pytest.raises(PolicyViolation, match="it keeps a copy of every stack's .env, so it must be the gateway's own"):
        store.history("web")
    os.chmod(root / STATE_DIRNAME, 0o700)
    os.chown(root / STATE_DIRNAME, 65534, 65534)
    with pytest.raises(PolicyViolation, match="belongs to uid 65534"):
        store.make_scratch("web")


def exchange(a: Path, b: Path) -> None:
    """Swap two entries atomically (renameat2 RENAME_EXCHANGE): no moment sees neither."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(_AT_FDCWD, bytes(a), _AT_FDCWD, bytes(b), _RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")


@pytest.fixture
def flipping(root: Path) -> Iterator[Callable[[Path, Path], threading.Event]]:
    """Start a thread swapping two entries back and forth until the test ends."""
    stops: list[tuple[threading.Event, threading.Thread]] = []

    def start(a: Path, b: Path) -> threading.Event:
        stop, flips = threading.Event(), threading.Event()

        def run() -> None:
            while not stop.is_set():
                exchange(a, b)
                flips.set()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        stops.append((stop, thread))
        flips.wait(10)
        return flips

    yield start
    for stop, thread in stops:
        stop.set()
        thread.join(10)


def test_a_stack_folder_swapped_for_a_link_mid_write_never_lets_a_write_through(
    root: Path, host: Path, flipping: Callable[[Path, Path], threading.Event]
) -> None:
    store = VersionStore(root)
    folder = make_stack(root)
    (root / "swap").symlink_to(host)
    before = snapshot_tree(host)
    flipping(folder, root / "swap")
    outcomes = {"installed": 0, "refused": 0}
    n = 0
    while n < 300 or not (outcomes["installed"] and outcomes["refused"]):
        n += 1
        assert n < 20_000, outcomes  # the race is met long before this
        try:
            store.install("web", Snapshot(f"services: {{}}\n# {n}\n".encode(), b"A=1\n"))
            outcomes["installed"] += 1
        except (NotFollowed, GatewayError):
            outcomes["refused"] += 1
        try:
            existing = store.on_disk(folder)
            assert existing is None or MARKER.encode() not in existing[1].compose + (existing[1].env or b"")
        except NotFollowed:
            pass
    assert snapshot_tree(host) == before
    assert outcomes["installed"] and outcomes["refused"], outcomes  # both sides of the race were met


def test_an_env_file_swapped_for_a_link_while_read_is_never_read_through_it(
    root: Path, host: Path, flipping: Callable[[Path, Path], threading.Event]
) -> None:
    folder = make_stack(root)
    (folder / "swap.env").symlink_to(host / "secret.env")
    flipping(folder / ".env", folder / "swap.env")
    secret = sha256_hex((host / "secret.env").read_bytes())
    seen = {"read": 0, "refused": 0}
    n = 0
    while n < 500 or not (seen["read"] and seen["refused"]):
        n += 1
        assert n < 20_000, seen
        try:
            existing = VersionStore.on_disk(folder)
        except NotFollowed:
            seen["refused"] += 1
            continue
        assert existing is not None and existing[1].env == b"A=1\n"
        seen["read"] += 1
        try:
            reading = read_stack(folder, [folder / "compose.yaml"])
            assert all(f.sha256 != secret for f in reading.files)
        except ReadRefused:
            pass
    assert seen["read"] and seen["refused"], seen
