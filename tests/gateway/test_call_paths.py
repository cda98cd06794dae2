"""Short call paths (issue 22): a real call, traced file by file through the gateway's sources.

A profiler (``sys.setprofile`` in this thread, ``threading.setprofile`` in the worker threads the
call starts) records every call into a ``gateway/`` source file and the gateway file it came from.
Work handed to a worker thread (``anyio.to_thread.run_sync``) counts as called by the file that
handed it over. From that trace:

- **the path** is the layers the call passes through: the file it enters by, and every file entered
  from another sub-package (or any core module). A module entered from its own sub-package is that
  package's inside (the guard's reader and judge, the engine's transport); the leaves every layer
  shares (errors, models, metrics, stacks: ``test_architecture.LEAVES``) are vocabulary, not layers.
  A warm ``ps`` takes at most 6 of them, a cold ``up`` at most 8 (issue 22's bar);
- **one way in**: each layer is entered from one place only (one other package, or one core module),
  not from several layers asking it again (before, ``up`` reached the Compose CLI from lifecycle and
  from the guard, and asked the catalog from lifecycle, the catalog itself and the guard's helpers);
- **no return**: no file calls into a file that (directly or through others) called it, among all
  the gateway files the call enters, leaves and package insides included; a layer below never calls
  back up (before, Compose's events went back up from the CLI into lifecycle).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import anyio.to_thread
import pytest

from gateway.audit import AuditLog
from gateway.config import load_settings
from gateway.metrics import ControlPlane
from gateway.operations import ComposeOperations
from tests.conftest import StackFactory
from tests.gateway.test_architecture import LEAVES

pytestmark = [pytest.mark.docker]

GATEWAY = str(Path(__file__).resolve().parents[2] / "gateway") + os.sep
ENTRY = "<entry>"
STACK = "services:\n  a:\n    image: {image}\n    init: true\n    command: ['sleep', '3600']\n    volumes: [data:/d]\nvolumes:\n  data:\n"  # noqa: E501


def _package(file: str) -> str:
    parts = file.split("/")
    return parts[0] if len(parts) > 1 else "core"


def _leaf(file: str) -> bool:
    return _package(file) == "core" and file.removesuffix(".py") in LEAVES


@dataclass
class Trace:
    """The gateway files one call entered, in order, and every (caller, callee) pair of files."""

    entered: list[str] = field(default_factory=list)
    edges: set[tuple[str, str]] = field(default_factory=set)

    def path(self) -> list[str]:
        """The layers: the entry file and every file entered across a package, leaves left out."""
        layers: list[str] = []
        for caller, callee in sorted(self.edges, key=lambda edge: self.entered.index(edge[1])):
            across = caller == ENTRY or _package(caller) != _package(callee) or _package(callee) == "core"
            if across and not _leaf(callee) and callee not in layers:
                layers.append(callee)
        return layers

    def entered_from(self) -> dict[str, set[str]]:
        """For each layer, the other packages (or core modules) that call into it: one each on a straight path."""
        callers: dict[str, set[str]] = {layer: set() for layer in self.path()}
        for caller, callee in self.edges:
            if callee in callers and caller != ENTRY and _package(caller) != _package(callee):
                callers[callee].add(_package(caller) if _package(caller) != "core" else caller)
            elif callee in callers and caller != ENTRY and _package(callee) == "core":
                callers[callee].add(caller)
        return callers

    def returns(self) -> list[list[str]]:
        """Every cycle among the files: a file that calls back into one that called it."""
        graph: dict[str, set[str]] = {}
        for caller, callee in self.edges:
            if caller != ENTRY:
                graph.setdefault(caller, set()).add(callee)
        cycles: list[list[str]] = []

        def walk(node: str, stack: list[str]) -> None:
            for nxt in sorted(graph.get(node, ())):
                if nxt in stack:
                    cycles.append([*stack[stack.index(nxt) :], nxt])
                elif len(stack) < 40:
                    walk(nxt, [*stack, nxt])

        for start in sorted(graph):
            walk(start, [start])
        return cycles


@contextmanager
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[Trace]:
    """Record the gateway files entered while the block runs, in this thread and the threads it starts."""
    trace = Trace()
    origin = threading.local()
    lock = threading.Lock()

    def gateway_file(frame: FrameType | None) -> str | None:
        while frame is not None:
            name = frame.f_code.co_filename
            if name.startswith(GATEWAY):
                return name[len(GATEWAY) :]
            frame = frame.f_back
        return None

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or not frame.f_code.co_filename.startswith(GATEWAY):
            return
        callee = frame.f_code.co_filename[len(GATEWAY) :]
        caller = gateway_file(frame.f_back) or getattr(origin, "file", None)
        if caller is None:
            # The call itself, or a task it started in a task group (the loop resumes it, not its
            # starter): such a task runs a function of the file that started it.
            caller = callee if trace.entered else ENTRY
        with lock:
            if callee not in trace.entered:
                trace.entered.append(callee)
            if caller != callee:
                trace.edges.add((caller, callee))

    real_run_sync = anyio.to_thread.run_sync

    async def run_sync(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # Work handed to a worker thread is called by the file that handed it over.
        handed_by = gateway_file(sys._getframe(1))

        def in_thread(*inner: Any) -> Any:
            origin.file = handed_by
            try:
                return func(*inner)
            finally:
                origin.file = None

        return await real_run_sync(in_thread, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", run_sync)
    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        yield trace
    finally:
        sys.setprofile(None)
        threading.setprofile(None)


def _ops(stacks: StackFactory, tmp_path: Path) -> ComposeOperations:
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "COMPOSE_AGENT_STATE_DIR": str(tmp_path / "state")}
    settings = load_settings(environ, stacks_dir=stacks.root)
    ops = ComposeOperations.from_settings(
        settings, plane=ControlPlane.COMPOSE_AGENT, audit=AuditLog(tmp_path / "audit.log"), environ=dict(os.environ)
    )
    ops.cli  # noqa: B018 - a running gateway has located its Compose CLI long before
    return ops


def _in_a_fresh_loop(call: Callable[[], Awaitable[Any]]) -> None:
    # A loop of its own: its worker threads start after the profiler is set, so they are traced too.
    anyio.run(call)


def test_a_cold_up_and_a_warm_ps_take_short_paths_and_never_call_back_up(
    stacks: StackFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = _ops(stacks, tmp_path)
    name = stacks.make(STACK)
    try:
        with traced(monkeypatch) as up:
            _in_a_fresh_loop(lambda: ops.up(name))
        for _ in range(2):  # warm: the verdict, the listing and the start times are kept
            _in_a_fresh_loop(lambda: ops.ps(name))
        with traced(monkeypatch) as ps:
            _in_a_fresh_loop(lambda: ops.ps(name))
        _in_a_fresh_loop(lambda: ops.down(name, volumes=True))
    finally:
        ops.close()
    print("cold up:", " -> ".join(up.path()), f"({len(up.entered)} files in all)")
    print("warm ps:", " -> ".join(ps.path()), f"({len(ps.entered)} files in all)")
    assert up.path()[0] == "compose/lifecycle.py" and ps.path()[0] == "reads.py"
    # Where the guard decides, where Compose runs, where the audit line is written: all on up's path.
    assert {"catalog.py", "policy/guard.py", "compose/cli.py", "audit/log.py"} <= set(up.path())
    assert len(up.path()) <= 8, up.path()
    assert len(ps.path()) <= 6, ps.path()
    for trace in (up, ps):
        assert all(len(callers) <= 1 for callers in trace.entered_from().values()), trace.entered_from()
        assert trace.returns() == [], trace.returns()
