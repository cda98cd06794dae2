"""Limits that keep one caller from denying service to the others.

Three mechanisms, free of HTTP so that the gateway and the status panel share them:

- :class:`FailureLimiter` counts *failed* logins per client address and says when an address
  must wait. Nothing else is ever throttled by it: a valid credential is checked first.
- :class:`TokenBucket` caps the request rate of each principal (token identity).
- :class:`SessionCounter` caps the open MCP sessions of each principal, and forgets sessions that
  stayed idle as long as the SDK's own idle timeout, which closes them.

All of them are thread-safe (the panel's routes run in worker threads) and bounded in memory.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["FailureLimiter", "TokenBucket", "SessionCounter", "client_key", "LOCAL_KEY"]

Clock = Callable[[], float]
# How many of the oldest clients a full failure table looks at for one it can forget.
_EVICTION_SCAN = 64


# The one key of every caller on this host: any loopback address of either family, or a Unix socket.
LOCAL_KEY = "local"


def client_key(address: str | None) -> str:
    """The unit a failure (or an unauthenticated connection) is counted against.

    - An IPv4 address as it is, an IPv4-mapped IPv6 address as its IPv4 address.
    - Any other IPv6 address by its /64: one IPv6 host usually holds a whole /64, so counting single
      addresses would let it rotate through 2**64 of them.
    - Every loopback address (all of 127.0.0.0/8, ``::1``) and no address at all (a Unix socket)
      as one source, :data:`LOCAL_KEY`: a local caller could otherwise rotate through 16 million
      loopback addresses, or move between the address families, and start afresh each time.
    """
    if not address:
        return LOCAL_KEY
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone index names no other host
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return LOCAL_KEY
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


class FailureLimiter:
    """At most ``limit`` failures per client in a sliding ``window`` of seconds.

    Only failures are counted, and only further attempts from a client over the limit are refused;
    a caller that presents a valid credential never asks. Memory is bounded: past ``max_clients``
    one client is forgotten at a time, never everyone at once: of the few whose last failure is
    oldest, the first that is not being refused, else the oldest of all.
    """

    def __init__(
        self,
        *,
        limit: int = 30,
        window: float = 60.0,
        max_clients: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0 or max_clients < 1:
            raise ValueError("limit and max_clients must be at least 1, and window positive")
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._lock = threading.Lock()
        # client key -> failure times, oldest first; the dict is ordered by last failure, oldest first.
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, client: str) -> int | None:
        """Whole seconds until ``client`` may fail again, or None if its next attempt may go ahead."""
        now = self._clock()
        with self._lock:
            times = self._failures.get(client)
            if times is None:
                return None
            while times and times[0] <= now - self.window:
                times.popleft()
            if not times:
                del self._failures[client]
                return None
            if len(times) < self.limit:
                return None
            return max(1, math.ceil(times[0] + self.window - now))

    def record_failure(self, client: str) -> None:
        """Count one failed attempt by ``client``."""
        now = self._clock()
        with self._lock:
            times = self._failures.get(client)
            if times is None:
                if len(self._failures) >= self.max_clients:
                    self._evict_one(now)
                # A client never needs more than `limit` entries to be judged.
                times = self._failures[client] = deque(maxlen=self.limit)
            else:
                self._failures.move_to_end(client)
            times.append(now)

    def _evict_one(self, now: float) -> None:
        # Among the few whose last failure is oldest, forget the first that is not being refused, so
        # a flood of one-off failures from fresh addresses cannot lift a limit; else the oldest.
        # The scan is bounded, so a failure stays O(1) however full the table is.
        for index, (client, times) in enumerate(self._failures.items()):
            if index >= _EVICTION_SCAN:
                break
            if sum(1 for t in times if t > now - self.window) < self.limit:
                del self._failures[client]
                return
        self._failures.popitem(last=False)


class TokenBucket:
    """A request-rate limit per key: ``rate`` requests a second on average, bursts up to ``burst``.

    The keys are principal names, a handful, so the memory is bounded by the caller's key space.
    """

    def __init__(self, *, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    def take(self, key: str) -> float | None:
        """Spend one request of ``key``'s allowance: None if it may go ahead, else seconds to wait."""
        now = self._clock()
        with self._lock:
            tokens, when = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - when) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return None
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


@dataclass
class _Session:
    in_flight: int = 0
    last_active: float = 0.0


@dataclass
class _Owner:
    sessions: dict[str, _Session] = field(default_factory=dict)
    reserved: int = 0


class SessionCounter:
    """Open MCP sessions per principal, capped at ``limit`` each.

    Opening a session is two steps: :meth:`reserve` a place before the opening request is served
    (so a burst of concurrent openings cannot overshoot), then :meth:`opened` with the session id
    the server answered, or :meth:`release` if it answered none. Requests on a session are
    bracketed by :meth:`begin` and :meth:`end`; :meth:`closed` forgets one at once.

    A session with no request in flight for ``idle_timeout`` seconds is no longer counted: the
    SDK is configured with the same timeout and closes it then. A session that ended some other
    way (a crash) therefore frees its place after the same time, at the latest.
    """

    def __init__(self, *, limit: int, idle_timeout: float, clock: Clock = time.monotonic) -> None:
        if limit < 1 or idle_timeout <= 0:
            raise ValueError("limit must be at least 1 and idle_timeout positive")
        self.limit = limit
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._owners: dict[str, _Owner] = {}
        self._owner_of: dict[str, str] = {}  # session id -> principal

    def _sweep(self, owner: _Owner, now: float) -> None:
        expired = [
            sid for sid, s in owner.sessions.items() if s.in_flight == 0 and now - s.last_active >= self.idle_timeout
        ]
        for sid in expired:
            del owner.sessions[sid]
            self._owner_of.pop(sid, None)

    def open_count(self, principal: str) -> int:
        """Sessions of ``principal`` counted now (open, or being opened)."""
        with self._lock:
            owner = self._owners.get(principal)
            if owner is None:
                return 0
            self._sweep(owner, self._clock())
            return len(owner.sessions) + owner.reserved

    def reserve(self, principal: str) -> bool:
        """Hold a place for a session ``principal`` is opening; False if it is at its limit."""
        with self._lock:
            owner = self._owners.setdefault(principal, _Owner())
            self._sweep(owner, self._clock())
            if len(owner.sessions) + owner.reserved >= self.limit:
                return False
            owner.reserved += 1
            return True

    def release(self, principal: str) -> None:
        """Give back a reserved place: the opening request established no session."""
        with self._lock:
            owner = self._owners.get(principal)
            if owner is not None and owner.reserved > 0:
                owner.reserved -= 1

    def opened(self, principal: str, session_id: str) -> None:
        """Turn a reserved place into the session the server opened."""
        with self._lock:
            owner = self._owners.setdefault(principal, _Owner())
            owner.reserved = max(0, owner.reserved - 1)
            owner.sessions[session_id] = _Session(last_active=self._clock())
            self._owner_of[session_id] = principal

    def begin(self, session_id: str) -> None:
        """A request on ``session_id`` started (a session in use is never idle)."""
        with self._lock:
            session = self._find(session_id)
            if session is not None:
                session.in_flight += 1

    def end(self, session_id: str) -> None:
        """A request on ``session_id`` finished."""
        with self._lock:
            session = self._find(session_id)
            if session is not None:
                session.in_flight = max(0, session.in_flight - 1)
                session.last_active = self._clock()

    def closed(self, session_id: str) -> None:
        """The session ended (deleted by its client, or unknown to the server): forget it now."""
        with self._lock:
            principal = self._owner_of.pop(session_id, None)
            if principal is not None:
                self._owners[principal].sessions.pop(session_id, None)

    def _find(self, session_id: str) -> _Session | None:
        principal = self._owner_of.get(session_id)
        return None if principal is None else self._owners[principal].sessions.get(session_id)
