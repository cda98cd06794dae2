"""Exponential backoff: the one retry schedule of the gateway and the status panel.

The watchdog keeps its own on purpose: it imports nothing from the gateway, so that a broken
gateway cannot break its supervisor.
"""

from __future__ import annotations

__all__ = ["Backoff"]


class Backoff:
    """Delays of ``first``, ``first * factor``, ... capped at ``cap``, until :meth:`reset`."""

    def __init__(self, first: float, cap: float, *, factor: float = 2.0) -> None:
        if first <= 0 or cap < first or factor < 1:
            raise ValueError("backoff needs 0 < first <= cap and factor >= 1")
        self.first = first
        self.cap = cap
        self.factor = factor
        self.failures = 0

    def next(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        delay = min(self.cap, self.first * self.factor**self.failures)
        self.failures += 1
        return delay

    def peek(self) -> float:
        """The delay :meth:`next` would give, without counting a failure."""
        return min(self.cap, self.first * self.factor**self.failures)

    def reset(self) -> None:
        """Start over from ``first``: the thing retried worked."""
        self.failures = 0
