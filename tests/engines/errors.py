"""One error for everything that goes wrong while making or driving a test engine, and the one way to run a command.

Every command these helpers run goes through :func:`run`, so a failure always names the command, its
exit status and the end of its output: enough to act on from a CI log.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import IO, Any

__all__ = ["EngineError", "run"]

_TAIL = 3000


class EngineError(RuntimeError):
    """A test engine could not be built, started, reached or removed; the message says what to do."""


def _tail(text: str | bytes | None) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text[-_TAIL:].strip()


def run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    stdin: IO[Any] | int | None = None,
    stdout: IO[Any] | None = None,
    timeout: float = 60.0,
    check: bool = True,
    env: dict[str, str] | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with its output captured as text (or its stdout into the ``stdout`` file).

    Raises:
        EngineError: with ``check``, when it exits non-zero; always, when it outlives ``timeout``.
    """
    command = " ".join(argv)
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            stdin=stdin,
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = "\n".join(filter(None, (_tail(exc.stdout), _tail(exc.stderr))))
        raise EngineError(f"{what or command}: no end within {timeout:g} s ({command})\n{output}") from exc
    if check and proc.returncode != 0:
        output = "\n".join(filter(None, (_tail(proc.stdout), _tail(proc.stderr))))
        raise EngineError(f"{what or command}: exit {proc.returncode} ({command})\n{output}")
    return proc
