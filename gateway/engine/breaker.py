"""An engine's health as its calls see it: up, or degraded since a failure, with calls failing fast meanwhile.

A host that stops answering (paused, partitioned, its sshd hung) costs the first call its whole
deadline. Every later call would cost as much, and a fleet listing would wait on it each time. So
the first failure to reach the engine opens the breaker: calls fail at once, with the reason and
since when, and after a backoff (1 s, doubling to 30 s) one call is let through to try. When it is
answered the engine is up again and everything flows; when not, the wait doubles.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from ..backoff import Backoff
from ..errors import EngineUnavailable

__all__ = ["Breaker", "EngineState"]

FIRST_RETRY_S = 1.0
MAX_RETRY_S = 30.0


@dataclass(frozen=True)
class EngineState:
    """What is known of an engine: ``up``, or ``degraded`` with the ``reason``; ``since`` is Unix seconds."""

    status: Literal["up", "degraded"]
    since: float
    reason: str | None = None
    #: Seconds until the next call is let through to try the engine again (degraded only).
    retry_in: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "since": datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "reason": self.reason,
            "retry_in_s": None if self.retry_in is None else round(self.retry_in, 1),
        }


class Breaker:
    """Fails calls fast while the engine is degraded, letting one through now and then to try it again.

    Call :meth:`admit` before each call (it raises while the engine is degraded, unless this call
    is the one to try), then :meth:`succeeded` or :meth:`failed`, and :meth:`settle` in a
    ``finally`` with what :meth:`admit` returned.
    """

    def __init__(
        self,
        name: str,
        *,
        first: float = FIRST_RETRY_S,
        cap: float = MAX_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._backoff = Backoff(first, cap)
        self._clock = clock
        self._wall = wall
        self._since = wall()
        self._reason: str | None = None
        self._retry_at = 0.0
        self._trying = False

    @property
    def degraded(self) -> bool:
        return self._reason is not None

    @property
    def state(self) -> EngineState:
        if self._reason is None:
            return EngineState("up", self._since)
        return EngineState("degraded", self._since, self._reason, max(0.0, self._retry_at - self._clock()))

    def admit(self) -> bool:
        """Let a call through; True if it is the one trying a degraded engine again.

        Raises:
            EngineUnavailable: the engine is degraded and it is not yet time to try it again, or
                another call is trying it right now. The message names the engine and the reason.
        """
        if self._reason is None:
            return False
        wait = self._retry_at - self._clock()
        if wait > 0 or self._trying:
            since = datetime.fromtimestamp(self._since, UTC).strftime("%H:%M:%S UTC")
            retry = f"next try in {max(wait, 0.1):.1f} s" if wait > 0 else "being tried again now"
            raise EngineUnavailable(f"{self._reason} [engine '{self.name}' degraded since {since}; {retry}]")
        self._trying = True
        return True

    def settle(self, trying: bool) -> None:
        """End of a call :meth:`admit` let through (in a ``finally``: a cancelled try frees the slot too)."""
        if trying:
            self._trying = False

    def succeeded(self) -> None:
        if self._reason is not None:
            self._reason = None
            self._since = self._wall()
            self._backoff.reset()

    def failed(self, reason: str) -> bool:
        """Record a failure to reach the engine; True if it was up until now (the breaker just opened)."""
        opened = self._reason is None
        if opened:
            self._since = self._wall()
        self._reason = reason
        self._retry_at = self._clock() + self._backoff.next()
        return opened
