"""The keeper: a small process that ends the CLI children a dead gateway leaves behind.

It is started once per gateway process, with its first child, and reads a pipe from the gateway:
``+<group>`` when a child (a process group leader) starts, ``-<group>`` once it has been reaped. When
the gateway ends, however it ends (SIGKILL and the OOM killer included), the kernel closes the pipe;
the keeper reads end of file, sends SIGTERM to every group still listed, SIGKILL to those still there
after a grace, and exits. A gateway that ends cleanly has stopped its children already, and the
keeper exits at once.

It ignores the terminal's signals and runs in a session of its own, so a Ctrl-C or a signal to the
gateway's process group reaches the gateway and leaves the keeper to clean up after it. It costs one
small Python process (``-I -S``: no site, no environment) for the gateway's life, and one pipe write
per child start and end.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["Keeper", "keeper", "process_start_time", "KEEPER_GRACE_S"]

logger = logging.getLogger(__name__)

KEEPER_GRACE_S = 5.0

_CODE = """\
# compose-agent keeper: ends the CLI children of a gateway that has gone (see gateway/compose/keeper.py)
import os, signal, time
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(s, signal.SIG_IGN)
groups, pending = set(), b""
while True:
    try:
        chunk = os.read(0, 4096)
    except InterruptedError:
        continue
    if not chunk:
        break
    pending += chunk
    *lines, pending = pending.split(b"\\n")
    for line in lines:
        if line[1:].isdigit():
            (groups.add if line[:1] == b"+" else groups.discard)(int(line[1:]))
def signal_all(signum):
    alive = set()
    for group in groups:
        try:
            os.killpg(group, signum)
            alive.add(group)
        except OSError:
            pass
    return alive
groups = signal_all(signal.SIGTERM)
deadline = time.monotonic() + GRACE
while groups and time.monotonic() < deadline:
    time.sleep(0.1)
    groups = signal_all(0)
signal_all(signal.SIGKILL)
"""


def process_start_time(pid: int, proc: Path = Path("/proc")) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat``); None if it is gone.

    A pid and its start time together name one process: pids are reused, start times are not.
    """
    try:
        stat = (proc / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces and parentheses itself: split after the last.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of the line; fields here start at field 3
    except (IndexError, ValueError):
        return None


class Keeper:
    """The gateway's side of the keeper: which groups to end if the gateway dies. Thread-safe."""

    def __init__(self, grace: float = KEEPER_GRACE_S) -> None:
        self.grace = grace
        self._lock = threading.Lock()
        self._groups: set[int] = set()
        self._process: subprocess.Popen[bytes] | None = None
        self._warned = False

    @property
    def pid(self) -> int | None:
        """The keeper process's pid, once started (tests look at it)."""
        process = self._process
        return None if process is None else process.pid

    def watch(self, group: int) -> None:
        """End ``group`` if the gateway dies before :meth:`forget` is called for it."""
        with self._lock:
            self._groups.add(group)
            self._send(b"+%d\n" % group)

    def forget(self, group: int) -> None:
        """``group``'s leader has been reaped: nothing to end any more."""
        with self._lock:
            if group in self._groups:
                self._groups.discard(group)
                self._send(b"-%d\n" % group)

    def close(self) -> None:
        """Let the keeper go (at a clean exit, after every child was stopped)."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None and process.stdin is not None:
            process.stdin.close()
            try:
                process.wait(timeout=self.grace + 2)
            except subprocess.TimeoutExpired:
                pass

    def _send(self, line: bytes) -> None:
        for _ in range(2):
            if self._process is None or self._process.poll() is not None:
                if not self._start():
                    return
                # A new keeper knows nothing yet: tell it every group, this one included.
                line = b"".join(b"+%d\n" % group for group in sorted(self._groups))
            assert self._process is not None and self._process.stdin is not None
            try:
                os.write(self._process.stdin.fileno(), line)
                return
            except BlockingIOError:
                self._warn("the keeper is not reading; a child may outlive a crash of the gateway")
                return
            except OSError:
                self._process = None  # it died: start another, once
        self._warn("cannot reach the keeper; a child may outlive a crash of the gateway")

    def _start(self) -> bool:
        code = _CODE.replace("GRACE", repr(self.grace))
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", code],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={},
                cwd="/",
                start_new_session=True,
            )
        except OSError as exc:
            self._process = None
            self._warn(f"cannot start the keeper ({exc.strerror or exc}); a child may outlive a crash of the gateway")
            return False
        assert self._process.stdin is not None
        # Never block the event loop on it: a keeper that stopped reading costs a warning, not the gateway.
        os.set_blocking(self._process.stdin.fileno(), False)
        return True

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("%s", message)


_KEEPER = Keeper()


def keeper() -> Keeper:
    """This process's keeper (one per gateway process)."""
    return _KEEPER
