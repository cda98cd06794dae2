"""How many failed logins a client gets before it has to wait."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["LoginRateLimiter"]


class LoginRateLimiter:
    """At most ``max_failures`` failed logins per client per ``window`` seconds.

    A success does not clear earlier failures: that would let a guesser who also holds one valid
    account reset the counter at will.
    """

    def __init__(
        self, max_failures: int = 5, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def _prune(self, client: str, now: float) -> deque[float]:
        times = self._failures.setdefault(client, deque())
        while times and now - times[0] >= self.window:
            times.popleft()
        return times

    def retry_after(self, client: str) -> int | None:
        """Seconds until the client may try again, or None if it may try now."""
        now = self._clock()
        with self._lock:
            times = self._prune(client, now)
            if len(times) < self.max_failures:
                if not times:
                    self._failures.pop(client, None)
                return None
            return max(1, int(times[0] + self.window - now + 0.999))

    def record_failure(self, client: str) -> None:
        """Count one failed login of ``client``."""
        now = self._clock()
        with self._lock:
            self._prune(client, now).append(now)
