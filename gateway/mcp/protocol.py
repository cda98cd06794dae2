"""uvicorn's h11 protocol under the edge's :class:`~gateway.mcp.edge.ConnectionGuard`.

It asks the guard before taking a connection, tells it when a request is being served (such a
connection is never closed to make room) and when the connection goes, and closes a connection
whose request head or body comes too slowly. The connection it serves is set in a context variable
while it hands data to h11, so that the task uvicorn starts for a request inherits it and the app
can mark it authenticated (:func:`~gateway.mcp.edge.mark_authenticated`).

It leans on uvicorn's h11 protocol as it is in 0.54 (``cycle``, ``on_response_complete``); the
edge's tests drive every path of it over real sockets, so an upgrade that moves them fails there.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle
from uvicorn.protocols.utils import get_remote_addr

from .edge import CURRENT_CONNECTION, Connection, ConnectionGuard, EdgeLimits

__all__ = ["EdgeProtocol", "edge_protocol"]


class EdgeProtocol(H11Protocol):
    """uvicorn's h11 protocol under a :class:`ConnectionGuard` (see the module's documentation).

    Made for one guard by :func:`edge_protocol`; uvicorn creates one instance per connection.
    """

    guard: ConnectionGuard | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connection: Connection | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        assert self.guard is not None
        self.transport = transport
        remote = get_remote_addr(transport)
        connection = self.guard.admit(transport, remote[0] if remote else None)
        if connection is None:
            transport.abort()
            return
        self._connection = connection
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel(head=True, body=True)
        if self._connection is None:
            return  # refused: uvicorn never knew it
        if self.guard is not None:
            self.guard.release(self._connection)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._connection is None or self._connection.closed:
            return
        before = self.cycle
        token = CURRENT_CONNECTION.set(self._connection)
        try:
            super().data_received(data)
        finally:
            CURRENT_CONNECTION.reset(token)
        self._after_events(before)

    def on_response_complete(self) -> None:
        before = self.cycle
        super().on_response_complete()
        if self._connection is None:
            return
        self._connection.busy = False
        self._cancel(body=True)
        if not self.transport.is_closing():
            self._await_head()
        self._after_events(before)  # a pipelined request may have started

    def _after_events(self, before: RequestResponseCycle | None) -> None:
        cycle = self.cycle
        if self._connection is None or cycle is None:
            return
        if cycle is not before and not cycle.response_complete:
            # A request's head is in: the app serves it now.
            self._connection.busy = True
            self._cancel(head=True)
            if cycle.more_body:
                self._body_timer = self.loop.call_later(self.guard_limits.body_timeout, self._body_timed_out)
        if not cycle.more_body:
            self._cancel(body=True)

    @property
    def guard_limits(self) -> EdgeLimits:
        assert self.guard is not None
        return self.guard.limits

    def _await_head(self) -> None:
        self._cancel(head=True)
        self._head_timer = self.loop.call_later(self.guard_limits.header_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being served: not waiting for a head
        self._close_slow("head")

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_complete:
            self._close_slow("body")

    def _close_slow(self, what: str) -> None:
        if self._connection is not None and self.guard is not None and not self.transport.is_closing():
            self.guard.timed_out(what, self._connection)
            self.transport.close()

    def _cancel(self, *, head: bool = False, body: bool = False) -> None:
        if head and self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if body and self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None


def edge_protocol(guard: ConnectionGuard) -> type[EdgeProtocol]:
    """The protocol class to hand uvicorn (``Config(http=...)``), bound to ``guard``."""
    return type("EdgeProtocol", (EdgeProtocol,), {"guard": guard})
