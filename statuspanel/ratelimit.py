"""How many failed credentials a client address gets before further failures must wait.

Only failures count, per client address as the server sees it (uvicorn's ``scope["client"]``,
which follows ``X-Forwarded-For`` only from ``--forwarded-allow-ips``). The memory is bounded:
past ``max_clients`` addresses one is forgotten, never everyone at once, and an address that is
being refused is kept over one that is not, so a flood of single failures does not lift a limit.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

__all__ = ["LoginRateLimiter", "client_address"]

# How far eviction looks for an address that is not being refused: bounded, so a failure stays O(1).
_EVICTION_SCAN = 64


class LoginRateLimiter:
    """At most ``max_failures`` failed logins per client per ``window`` seconds.

    A success does not clear earlier failures: that would let a guesser who also holds one valid
    account reset the counter at will.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_clients: int = 10_000,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._lock = threading.Lock()
        # Least recently failed first, so the bound evicts the address that has been quiet longest.
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _prune(self, client: str, now: float) -> deque[float]:
        times = self._failures.get(client)
        if times is None:
            return deque()
        while times and now - times[0] >= self.window:
            times.popleft()
        if not times:
            del self._failures[client]
        return times

    def retry_after(self, client: str) -> int | None:
        """Seconds until the client's failures stop being refused, or None if it may try now."""
        now = self._clock()
        with self._lock:
            times = self._prune(client, now)
            if len(times) < self.max_failures:
                return None
            return max(1, int(times[0] + self.window - now + 0.999))

    def record_failure(self, client: str) -> None:
        """Count one failed attempt of ``client``."""
        now = self._clock()
        with self._lock:
            times = self._prune(client, now)
            times.append(now)
            self._failures[client] = times
            self._failures.move_to_end(client)
            while len(self._failures) > self.max_clients:
                self._evict_one()

    def _evict_one(self) -> None:
        # Among the longest-quiet few, the first that is not being refused; else the longest-quiet.
        for index, (client, times) in enumerate(self._failures.items()):
            if index >= _EVICTION_SCAN:
                break
            if len(times) < self.max_failures:
                del self._failures[client]
                return
        self._failures.popitem(last=False)

    @property
    def tracked(self) -> int:
        """How many client addresses have failures on record."""
        return len(self._failures)


def client_address(client: tuple[str, int] | None) -> str:
    """The address failures are counted under: the peer uvicorn reports (``scope["client"]``)."""
    return client[0] if client else "unknown"
