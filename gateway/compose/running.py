"""A clean stop: wait a bounded time for the Compose commands that run, then stop them.

The write path runs each Compose command inside :meth:`RunningCommands.track`. On SIGTERM the
entry point calls :meth:`RunningCommands.drain`: new commands are refused at once, running ones
get ``timeout`` seconds to finish, and those still running then are cancelled. Cancelling one
ends its Compose process group (see :mod:`gateway.compose.cli`), and the write path records an
``interrupted`` outcome that says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from ..errors import ShuttingDown

__all__ = ["RunningCommands", "ShuttingDown"]

logger = logging.getLogger(__name__)

# compose.py's stop: SIGTERM to the group, 5 s, then SIGKILL; plus time to write the outcome.
_STOP_ALLOWANCE_S = 10.0


class RunningCommands:
    """The Compose commands running now, so that a shutdown can wait for them and then stop them."""

    def __init__(self) -> None:
        self._running: dict[int, tuple[str, anyio.CancelScope]] = {}
        self._idle: anyio.Event | None = None
        self.stopping = False
        self.timeout = 0.0

    def __len__(self) -> int:
        return len(self._running)

    @contextmanager
    def track(self, what: str) -> Iterator[anyio.CancelScope]:
        """Run one command under a cancel scope that a shutdown may cancel.

        After the block, ``scope.cancelled_caught`` tells that the shutdown stopped it; the caller
        then reports :meth:`interruption`.

        Raises:
            ShuttingDown: the gateway is stopping; the command was not started.
        """
        if self.stopping:
            raise ShuttingDown(f"the gateway is shutting down; {what} was not started. Retry once it is back")
        scope = anyio.CancelScope()
        key = id(scope)
        self._running[key] = (what, scope)
        try:
            with scope:
                yield scope
        finally:
            del self._running[key]
            if not self._running and self._idle is not None:
                self._idle.set()

    def interruption(self, what: str) -> ShuttingDown:
        """The error a command stopped by the shutdown reports."""
        return ShuttingDown(
            f"the gateway shut down while {what} ran, waited {self.timeout:g} s for it, and then stopped "
            "its docker compose process group; check the stack with ps"
        )

    async def drain(self, timeout: float) -> list[str]:
        """Refuse new commands, wait up to ``timeout`` seconds for running ones, then stop the rest.

        Returns the commands that had to be stopped.
        """
        self.stopping = True
        self.timeout = timeout
        if not self._running:
            return []
        self._idle = anyio.Event()
        logger.warning("shutting down: waiting up to %g s for %d running command(s)", timeout, len(self._running))
        with anyio.move_on_after(timeout):
            await self._idle.wait()
        stopped = [what for what, _ in self._running.values()]
        if stopped:
            logger.warning("shutting down: stopping %s", ", ".join(stopped))
            for _, scope in list(self._running.values()):
                scope.cancel()
            with anyio.move_on_after(_STOP_ALLOWANCE_S):
                await self._idle.wait()
        return stopped
