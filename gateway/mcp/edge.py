"""The HTTP edge below the app: how many connections, for how long, before a request has been read.

uvicorn (0.54, h11) bounds neither. A connection that sends its request head a byte a second holds
a file descriptor for as long as it likes (its keep-alive timer runs only after a response), and
nothing stops a flood of such connections from taking every descriptor the process has: then
``accept()`` fails, and so does everything else that needs one. uvicorn's ``limit_concurrency``
does not help: it answers 503 to *requests*, authenticated ones included, once the head is in.

So the gateway serves HTTP with :class:`~gateway.mcp.protocol.EdgeProtocol`, uvicorn's h11 protocol
under this module's :class:`ConnectionGuard`, with four additions, all decided on the event loop
without reading anything from the connection:

- **A cap on open connections** (:meth:`ConnectionGuard.capacity`): the configured maximum, and never
  more than the descriptor limit minus :data:`FD_RESERVE`, which is kept for the engine, the Compose
  runs and the audit. At the cap, a new connection makes room by closing the oldest *unauthenticated*
  connection that has no request in progress; if there is none, it is refused (closed at once).
  asyncio accepts up to the listen backlog's worth of connections in one turn of the loop, before
  any of them reaches the guard, so the server listens with a backlog of :data:`ACCEPT_BACKLOG`,
  which the reserve has room for.
- **A cap per peer** on unauthenticated connections (a peer is :func:`~gateway.ratelimit.client_key`
  of its address: loopback and Unix sockets are one peer): past it, the peer's own oldest idle
  unauthenticated connection is closed, once it is older than :data:`EVICTION_GRACE_S`. A client
  that opens many connections at once (a pool filling up) is not cut off before its requests
  arrive; one that keeps them open without a token is. Trusted proxies (``--forwarded-allow-ips``)
  are exempt.
- **A header timeout**: a request's head must arrive within ``header_timeout`` of the connection's
  start (or of the previous response's end).
- **A body timeout**: its body within ``body_timeout`` of its head.

A connection becomes *authenticated* when the app sees a valid token on one of its requests
(:func:`mark_authenticated`; the connection is found through a context variable that the request's
task inherits). Authenticated connections are never closed to make room. What the edge closes or
refuses is logged once per :data:`LOG_INTERVAL_S` as counts, never once per connection.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import logging
import math
import resource
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ..ratelimit import client_key

__all__ = [
    "ACCEPT_BACKLOG",
    "CURRENT_CONNECTION",
    "Connection",
    "ConnectionGuard",
    "EdgeLimits",
    "FD_RESERVE",
    "MIN_CAPACITY",
    "mark_authenticated",
    "trusted_networks",
]

logger = logging.getLogger(__name__)

# Descriptors kept for everything but client connections: the engine's pool, the event stream,
# Compose runs (three pipes each), the audit log, the keeper, Python's own.
FD_RESERVE = 128
# The listen backlog, which is also how many connections asyncio accepts in one turn of its loop.
ACCEPT_BACKLOG = 32
# However low the descriptor limit, this many connections are allowed (the health probe needs one).
MIN_CAPACITY = 16
LOG_INTERVAL_S = 10.0
# How many of the oldest unauthenticated connections are looked at for one to close.
_EVICTION_SCAN = 64
# A peer's connection younger than this is not closed for its peer's cap: its request may be on its way.
EVICTION_GRACE_S = 1.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class EdgeLimits:
    """The edge's settings; see the module's documentation."""

    max_connections: int = 1024
    max_per_peer: int = 32
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    #: Peers exempt from the per-peer cap: the proxies whose forwarded addresses are believed.
    trusted: tuple[Network, ...] = ()
    log_interval: float = LOG_INTERVAL_S


def trusted_networks(forwarded_allow_ips: Iterable[str]) -> tuple[Network, ...]:
    """The networks of ``--forwarded-allow-ips`` (``*`` is every address); entries that are not one are skipped."""
    networks: list[Network] = []
    for entry in forwarded_allow_ips:
        if entry == "*":
            return (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue
    return tuple(networks)


class Closable(Protocol):
    """The part of a connection's transport the guard uses."""

    def abort(self) -> None: ...


@dataclass(eq=False)
class Connection:
    """What the guard knows of one accepted connection."""

    guard: ConnectionGuard
    transport: Closable
    peer: str
    exempt: bool
    opened: float
    authenticated: bool = False
    busy: bool = False  # a request is being served on it
    closed: bool = False


# The connection the request being served arrived on (the request's task inherits it).
CURRENT_CONNECTION: contextvars.ContextVar[Connection | None] = contextvars.ContextVar("edge_connection", default=None)


def mark_authenticated() -> None:
    """The request being served carries a valid token: its connection is never closed to make room."""
    connection = CURRENT_CONNECTION.get()
    if connection is not None:
        connection.guard.authenticated(connection)


@dataclass
class _Tally:
    """What the edge did since its last log line."""

    counts: Counter[str] = field(default_factory=Counter)
    peers: Counter[str] = field(default_factory=Counter)
    armed: bool = False


class ConnectionGuard:
    """The connections the edge holds, and the caps on them. Runs on the event loop only."""

    def __init__(
        self,
        limits: EdgeLimits,
        *,
        descriptor_limit: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._descriptor_limit = descriptor_limit or _soft_nofile
        self._clock = clock
        self._open: set[Connection] = set()
        # Unauthenticated connections, oldest first: all of them, and per peer.
        self._unauthenticated: OrderedDict[Connection, None] = OrderedDict()
        self._by_peer: dict[str, OrderedDict[Connection, None]] = {}
        self._tally = _Tally()

    @property
    def open(self) -> int:
        """Connections open now."""
        return len(self._open)

    def capacity(self) -> int:
        """How many connections may be open: the configured cap, within the descriptor limit."""
        by_descriptors = max(MIN_CAPACITY, self._descriptor_limit() - FD_RESERVE)
        return min(self.limits.max_connections, by_descriptors)

    def admit(self, transport: Closable, address: str | None) -> Connection | None:
        """Take a new connection in, closing an older unauthenticated one if needed; None: refuse it."""
        peer = client_key(address)
        exempt = _in_networks(address, self.limits.trusted)
        now = self._clock()
        if not exempt:
            same_peer = self._by_peer.get(peer)
            if same_peer is not None and len(same_peer) >= self.limits.max_per_peer:
                # Its young connections are spared (and it is admitted all the same): the cap on all
                # connections still bounds a burst.
                self._evict_from(same_peer, "closed_peer", peer, older_than=now - EVICTION_GRACE_S)
        if len(self._open) >= self.capacity() and not self._evict_from(self._unauthenticated, "closed_cap", peer):
            self._count("refused_cap", peer)
            return None
        connection = Connection(self, transport, peer, exempt, now)
        self._open.add(connection)
        self._unauthenticated[connection] = None
        if not exempt:
            self._by_peer.setdefault(peer, OrderedDict())[connection] = None
        return connection

    def authenticated(self, connection: Connection) -> None:
        if not connection.authenticated:
            connection.authenticated = True
            self._forget_unauthenticated(connection)

    def release(self, connection: Connection) -> None:
        """The connection is gone."""
        self._open.discard(connection)
        self._forget_unauthenticated(connection)

    def timed_out(self, what: str, connection: Connection) -> None:
        """The edge closed ``connection`` because its request's ``what`` (head, body) came too slowly."""
        self._count(f"timeout_{what}", connection.peer)

    def _forget_unauthenticated(self, connection: Connection) -> None:
        self._unauthenticated.pop(connection, None)
        same_peer = self._by_peer.get(connection.peer)
        if same_peer is not None:
            same_peer.pop(connection, None)
            if not same_peer:
                del self._by_peer[connection.peer]

    def _evict_from(
        self, candidates: OrderedDict[Connection, None], why: str, newcomer: str, *, older_than: float = math.inf
    ) -> bool:
        """Close the oldest of ``candidates`` that has no request in progress and opened before ``older_than``."""
        for index, connection in enumerate(candidates):
            if index >= _EVICTION_SCAN or connection.opened >= older_than:
                break
            if not connection.busy:
                self._count(why, newcomer)
                connection.closed = True
                self.release(connection)
                connection.transport.abort()
                return True
        return False

    # -- saying what happened, once an interval ----------------------------------------------------

    def _count(self, what: str, peer: str) -> None:
        tally = self._tally
        tally.counts[what] += 1
        if len(tally.peers) < 1000 or peer in tally.peers:
            tally.peers[peer] += 1
        if not tally.armed:
            tally.armed = True
            logger.log(
                _level(what),
                "%s; further events are counted and reported every %g s",
                _FIRST[what](self),
                self.limits.log_interval,
            )
            asyncio.get_running_loop().call_later(self.limits.log_interval, self._report)

    def _report(self) -> None:
        tally, self._tally = self._tally, _Tally()
        if not tally.counts:
            return  # a quiet interval: the next event is logged at once again
        parts = [f"{count} {_PLURAL[what]}" for what, count in sorted(tally.counts.items())]
        top = ", ".join(f"{peer} ({count})" for peer, count in tally.peers.most_common(3))
        level = max(_level(what) for what in tally.counts)
        logger.log(
            level,
            "edge, last %g s: %s; %d of %d connections open; most from %s",
            self.limits.log_interval,
            ", ".join(parts),
            self.open,
            self.capacity(),
            top,
        )
        self._tally.armed = True
        asyncio.get_running_loop().call_later(self.limits.log_interval, self._report)


_FIRST: dict[str, Callable[[ConnectionGuard], str]] = {
    "refused_cap": lambda g: (
        f"connection cap reached ({g.open} open of {g.capacity()}), every one authenticated "
        "or busy: refusing new connections"
    ),
    "closed_cap": lambda g: (
        f"connection cap reached ({g.open} open of {g.capacity()}): closing the oldest "
        "unauthenticated connections to make room"
    ),
    "closed_peer": lambda g: (
        f"a peer opened more than {g.limits.max_per_peer} unauthenticated connections: closing its oldest"
    ),
    "timeout_head": lambda g: f"closed a connection whose request head took longer than {g.limits.header_timeout:g} s",
    "timeout_body": lambda g: f"closed a connection whose request body took longer than {g.limits.body_timeout:g} s",
}
_PLURAL = {
    "refused_cap": "refused at the cap",
    "closed_cap": "unauthenticated closed to make room",
    "closed_peer": "closed over the per-peer cap",
    "timeout_head": "closed for a slow request head",
    "timeout_body": "closed for a slow request body",
}


def _level(what: str) -> int:
    return logging.INFO if what.startswith("timeout") else logging.WARNING


def _soft_nofile() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def _in_networks(address: str | None, networks: tuple[Network, ...]) -> bool:
    if not address or not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)
