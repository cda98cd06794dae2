"""CLI children in a box: a budget the kernel enforces, and none outlives the gateway.

Everything is real: the Compose CLI against the engine, ``/proc`` to read what the kernel applied,
SIGKILL to end a gateway the hard way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.compose.cli import ComposeCli
from gateway.compose.keeper import KEEPER_GRACE_S, process_start_time
from gateway.compose.process import PARENT_ENV, Budget, budget_exceeded, find_orphans, parent_marker
from gateway.errors import ComposeFailed
from tests.conftest import NEVER_HEALTHY, StackFactory
from tests.gateway.conftest import start_gateway, stop_process
from tests.polling import eventually, wait_for
from tests.processes import compose_pids, compose_up_pids

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

# A kilobyte of YAML that expands to billions of nodes: Compose's reader has no budget of its own. Built
# from its levels, so that the suite's scan for ordinary compose files (tests/gateway/policy) does not
# take this hostile one for one of them; the guard refuses it, and the budget test runs Compose on it directly.
_LEVELS = "abcdefg"
ALIAS_BOMB = (
    'x-a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"x-{b}: &{b} [{','.join([f'*{a}'] * 9)}]\n" for a, b in zip(_LEVELS, _LEVELS[1:], strict=False))
    + "services:\n  s:\n    image: busybox\n    labels:\n      x: *g\n"
)


def gone(pid: int) -> bool:
    """``pid`` has exited (a zombie waiting for a parent that never reaps counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] == "Z"


def limits_of(pid: int) -> dict[str, tuple[str, str]]:
    """``/proc/<pid>/limits``: each limit's name -> (soft, hard)."""
    table = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        table[name] = (soft, hard)
    return table


@pytest.fixture
def compose_cli() -> ComposeCli:
    return ComposeCli.locate(None, dict(os.environ), budget=Budget(memory_mb=512, cpu_seconds=60))


async def test_a_compose_run_is_held_to_its_budget_as_the_kernel_sees_it(
    compose_cli: ComposeCli, stacks: StackFactory
) -> None:
    name = stacks.make(NEVER_HEALTHY)
    folder = stacks.root / name
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: compose_cli.run(
                name, ["up", "--detach", "--wait"], compose_file=folder / "compose.yaml", cwd=folder
            )
        )

        async def running() -> list[int]:
            return compose_up_pids(name)

        [pid] = await eventually(running, what="docker compose up running")

        async def budgeted() -> dict[str, tuple[str, str]] | None:
            # Set with prlimit(2) the moment the child has started (see gateway.compose.process).
            limits = limits_of(pid)
            return limits if limits["Max data size"][0] != "unlimited" else None

        found = await eventually(budgeted, timeout=5, interval=0.001, what="the budget on the child")
        assert found is not None
        limits = found
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        tg.cancel_scope.cancel()
    assert limits["Max data size"] == (str(512 * 1024 * 1024), str(512 * 1024 * 1024))
    assert limits["Max cpu time"] == ("60", "65")
    assert limits["Max core file size"] == ("0", "0")
    assert f"{PARENT_ENV}={parent_marker()}".encode() in environ
    # Nothing else of this process's environment: the allowlist, and the marker.
    names = {item.split(b"=", 1)[0].decode() for item in environ if item}
    assert names <= {
        "PATH",
        "HOME",
        "DOCKER_HOST",
        "DOCKER_CONFIG",
        "DOCKER_CERT_PATH",
        "DOCKER_TLS_VERIFY",
        # Set on every run, whatever the environment says: Compose loads no remote git or OCI files.
        "COMPOSE_EXPERIMENTAL_GIT_REMOTE",
        "COMPOSE_EXPERIMENTAL_OCI_REMOTE",
        PARENT_ENV,
    }
    assert compose_pids(name) == []


async def test_a_runaway_compose_is_stopped_by_its_memory_budget(tmp_path: Path) -> None:
    cli = ComposeCli.locate(None, dict(os.environ), budget=Budget(memory_mb=96, cpu_seconds=120))
    (tmp_path / "compose.yaml").write_text(ALIAS_BOMB)
    with pytest.raises(ComposeFailed) as failed:
        await cli.run("bomb", ["config"], compose_file=tmp_path / "compose.yaml", cwd=tmp_path)
    assert "memory budget of 96 MiB" in str(failed.value)


def test_a_budget_failure_says_which_budget_it_was() -> None:
    budget = Budget(memory_mb=256, cpu_seconds=30)
    assert "CPU budget of 30 s" in str(budget_exceeded(-signal.SIGXCPU, "", budget))
    assert "memory budget of 256 MiB" in str(budget_exceeded(2, "fatal error: runtime: out of memory", budget))
    assert budget_exceeded(1, "no such service", budget) is None
    assert budget_exceeded(-signal.SIGKILL, "", Budget(memory_mb=None, cpu_seconds=None)) is None


# -- nothing outlives the gateway ---------------------------------------------------------------

_PARENT = textwrap.dedent(
    """\
    import anyio, os, sys
    from gateway.compose.process import open_child

    async def main():
        child = await open_child(["sleep", "300"], env={"PATH": os.environ["PATH"]})
        print(child.pid, flush=True)
        await anyio.sleep_forever()

    anyio.run(main)
    """
)


@pytest.fixture
def parent_with_a_child() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A process that started a child through gateway.compose.process, and the child's pid."""
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    yield parent, child
    parent.kill()
    parent.wait()
    parent.stdout.close()
    if not gone(child):
        os.kill(child, signal.SIGKILL)


def test_the_keeper_ends_the_children_of_a_process_killed_with_sigkill(
    parent_with_a_child: tuple[subprocess.Popen[str], int],
) -> None:
    parent, child = parent_with_a_child
    assert not gone(child)
    parent.kill()
    parent.wait()
    wait_for(lambda: gone(child), timeout=KEEPER_GRACE_S + 10, what="the child ending with its parent")


async def test_sigkill_of_the_gateway_mid_up_leaves_no_compose_process(tmp_path: Path, stacks: StackFactory) -> None:
    name = stacks.make(NEVER_HEALTHY)
    gw = start_gateway(tmp_path, stacks.root)
    try:
        async with anyio.create_task_group() as tg:

            async def up_and_wait() -> None:
                # The gateway is killed under this call: losing the connection is how it is meant to end.
                with contextlib.suppress(Exception):
                    async with httpx2.AsyncClient(headers=gw.headers(), timeout=120) as http:
                        async with Client(streamable_http_client(gw.url, http_client=http)) as client:
                            await client.call_tool("up", {"project": name, "wait": True})

            tg.start_soon(up_and_wait)

            async def up_running() -> list[int]:
                return compose_up_pids(name)

            await eventually(up_running, timeout=60, what="docker compose up running under the gateway")
            gw.process.send_signal(signal.SIGKILL)
            gw.process.wait()

            async def no_compose_left() -> bool:
                return compose_pids(name) == []

            await eventually(no_compose_left, timeout=KEEPER_GRACE_S + 15, what="no compose process left")
            tg.cancel_scope.cancel()
    finally:
        stop_process(gw.process)


async def test_a_restart_stops_and_reports_a_process_an_older_gateway_left(tmp_path: Path) -> None:
    # An "older gateway" that started a child with its marker and died without its keeper.
    script = textwrap.dedent(
        f"""\
        import os, subprocess, sys
        from gateway.compose.keeper import process_start_time
        marker = f"{{os.getpid()}}:{{process_start_time(os.getpid())}}"
        child = subprocess.Popen(["sleep", "300"], env={{"PATH": os.environ["PATH"], {PARENT_ENV!r}: marker}},
                                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(child.pid, flush=True)
        """
    )
    older = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    orphan = int(older.stdout)
    try:
        assert any(o.pid == orphan for o in find_orphans())
        stacks = tmp_path / "stacks"
        stacks.mkdir()
        gw = start_gateway(tmp_path, stacks)
        try:

            async def reported() -> bool:
                return f"pid {orphan}, sleep 300; stopping it" in gw.stderr_text()

            await eventually(reported, timeout=15, what="the orphan reported")

            async def stopped() -> bool:
                return gone(orphan)

            await eventually(stopped, timeout=15, what="the orphan stopped")
        finally:
            stop_process(gw.process)
    finally:
        if not gone(orphan):
            os.kill(orphan, signal.SIGKILL)


def test_a_live_gateways_children_are_not_orphans(parent_with_a_child: tuple[subprocess.Popen[str], int]) -> None:
    _, child = parent_with_a_child
    assert child not in {o.pid for o in find_orphans()}
    assert process_start_time(os.getpid()) is not None
