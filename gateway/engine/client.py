"""Reads through the Docker Engine API: fast, structured, one list call per ``ps``, over any transport.

:class:`Engine` is one engine (the gateway's own, or a host of its fleet): each read is written once,
async, over its :class:`~gateway.engine.connection.Connection` (a Unix socket, TCP with TLS, or SSH;
kept channels, a deadline on every call, a breaker that fails calls fast while the engine is
degraded). Blocking callers get the same reads through :mod:`gateway.engine.blocking`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import Any

import anyio
import anyio.lowlevel

from ..errors import EngineUnavailable, GatewayError
from .blocking import iterate_blocking, run_blocking
from .breaker import EngineState
from .connection import NEWEST_API_VERSION, RAISE, Connection, Query, negotiate_version
from .containers import ONEOFF_LABEL, PROJECT_LABEL, parse_time, uptime_upper_bound
from .endpoint import CLIENT_VARIABLES, DEFAULT_DOCKER_HOST, EngineEndpoint
from .streams import follow_events, log_blocks, service_log
from .transport import EngineRefused

__all__ = ["Engine", "LISTING_MAX_AGE_S", "NEWEST_API_VERSION", "negotiate_version"]

logger = logging.getLogger(__name__)

#: The longest a listing kept current by the event stream answers ps before it is asked again. It
#: bounds what an event the engine dropped or delayed could hide; events end a listing far sooner.
LISTING_MAX_AGE_S = 1.0


@dataclass
class _Flight:
    done: anyio.Event
    result: list[dict[str, Any]] | None = None
    error: GatewayError | None = None


class Engine:
    """One Docker engine's reads, and its connection for everything else that speaks to it.

    ``endpoint`` is its :class:`~gateway.engine.endpoint.EngineEndpoint`, or a ``DOCKER_HOST`` value
    for an engine without TLS (``timeout`` then sets the deadline of its calls); ``name`` names it
    in messages and in its state (the gateway's own engine is ``local``).

    Raises:
        ConfigError: an endpoint that cannot be used (see :class:`EngineEndpoint`), or an ssh one
            with no ssh client.
    """

    def __init__(
        self, endpoint: EngineEndpoint | str | None = None, *, timeout: float | None = None, name: str = "local"
    ) -> None:
        if not isinstance(endpoint, EngineEndpoint):
            endpoint = EngineEndpoint(endpoint or DEFAULT_DOCKER_HOST, timeout=timeout or 10.0)
        elif timeout is not None:
            endpoint = replace(endpoint, timeout=timeout)
        self.endpoint = endpoint
        self.name = name
        self.docker_host = endpoint.docker_host
        self.connection = Connection(endpoint, name=name)
        # A lost connection may have hidden events, and a degraded engine's listings are not current.
        self.connection.on_lost(self._forget_listings)
        # container id -> (StartedAt as given, as epoch seconds); see started_at().
        self._started: dict[str, tuple[str, float]] = {}
        # Listings in flight, so that concurrent identical ones share one engine request; see
        # project_containers_async. Keyed by project, generation and event loop.
        self._flights: dict[tuple[str, int, object], _Flight] = {}
        self._generation = 0
        # Listings kept while the engine's event stream is followed (gateway.mcp.watch tells us), by
        # project: (when asked, monotonic; the listing). Any event of the project ends its entry.
        self._watching = False
        self._listings: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._changes = 0  # events and stream changes seen; a listing asked across one is not kept

    @property
    def state(self) -> EngineState:
        """``up``, or ``degraded`` since a failure to reach it, with the reason (for ``list_stacks``, ``/health``)."""
        return self.connection.state

    @property
    def api_version(self) -> str:
        """The negotiated Engine API version (negotiating now, blocking, if there is no connection yet)."""
        return run_blocking(self.connection.version)

    def cli_environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """``environ`` for the docker CLI and Compose run against this engine.

        The Docker client variables are this engine's (``DOCKER_HOST``, and the TLS ones for TLS),
        never ``environ``'s own, and for an SSH engine the gateway multiplexes, ``PATH`` leads to
        the ``ssh`` that makes their connections ride its master connection.
        """
        env = {key: value for key, value in environ.items() if key not in CLIENT_VARIABLES}
        env.update(self.endpoint.client_environment())
        if self.connection.ssh is not None:
            env["PATH"] = self.connection.ssh.cli_path(env.get("PATH", ""))
        return env

    def close(self) -> None:
        self.connection.close()

    async def ping_async(self) -> None:
        """The engine answers ``/_ping``.

        Raises:
            EngineUnavailable: it does not, or is degraded (then at once).
        """
        try:
            await self.connection.ping()
        except EngineRefused as exc:
            raise EngineUnavailable(f"the Docker engine {self.connection.label} answered its ping with {exc}") from exc

    def ping(self) -> None:
        run_blocking(self.ping_async)

    async def request(
        self, method: str, path: str, query: Query | None = None, body: Any = None, *, missing: Any = RAISE
    ) -> Any:
        """Any Engine API call, answered as JSON in this connection's version (for the swarm's calls).

        Raises:
            EngineUnavailable: the engine cannot be reached, did not answer in time, or is degraded.
            EngineRefused: an error status (``missing`` is returned for a 404 instead, if given).
        """
        return await self.connection.json(method, path, query, body, missing=missing)

    async def _read_json(self, path: str, query: Query | None = None, *, missing: Any = RAISE) -> Any:
        return await self.connection.json("GET", path, query, missing=missing)

    # -- containers --------------------------------------------------------------------------------

    def project_containers(self, project: str | None = None) -> list[dict[str, Any]]:
        """Blocking :meth:`project_containers_async`."""
        return run_blocking(self.project_containers_async, project)

    async def project_containers_async(self, project: str | None = None) -> list[dict[str, Any]]:
        """All containers of one compose project (or of every project), one-off ``run`` containers excluded.

        Concurrent calls for the same project share one engine request: a call that comes while
        that listing is on its way waits for it rather than asking again. Twenty clients polling
        one stack cost the engine and this process one listing per round trip, not twenty. The
        answer is never older than the request in flight when the call came, and never older than
        the gateway's own last change: :meth:`forget_start_times` (after every lifecycle action)
        starts a new generation that joins nothing asked before it.

        While the engine's event stream is followed (:meth:`events_followed`), a listing is also
        kept, and answers again until an event of its project arrives (:meth:`container_changed`),
        the stream drops, the gateway acts, or :data:`LISTING_MAX_AGE_S` passes. A listing asked
        while any event arrived is not kept: it may predate that event. So between polls of a
        steady stack the engine is asked about once a second, and a change made by anyone shows
        as soon as its event reaches the gateway.
        """
        name = project or ""
        if self._watching:
            kept = self._listings.get(name)
            if kept is not None and time.monotonic() - kept[0] < LISTING_MAX_AGE_S:
                return list(kept[1])
        key = (name, self._generation, anyio.lowlevel.current_token())
        while True:
            flight = self._flights.get(key)
            if flight is None:
                break
            # The same listing is on its way: share its answer instead of asking the engine again.
            await flight.done.wait()
            if flight.error is not None:
                raise _copy(flight.error)
            if flight.result is not None:
                return list(flight.result)
            # Its caller was cancelled before the answer came: ask anew.
        flight = _Flight(anyio.Event())
        self._flights[key] = flight
        asked, changes = time.monotonic(), self._changes
        try:
            label = f"{PROJECT_LABEL}={project}" if project else PROJECT_LABEL
            containers = await self._read_json("/containers/json", {"all": True, "filters": {"label": [label]}})
            flight.result = [c for c in containers if (c.get("Labels") or {}).get(ONEOFF_LABEL, "False") != "True"]
            if self._watching and self._changes == changes:
                self._listings[name] = (asked, flight.result)
            return list(flight.result)
        except GatewayError as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.done.set()

    def events_followed(self, following: bool) -> None:
        """Told by the event stream's follower when the stream opens (True) or drops (False).

        Call on the event loop that runs :meth:`project_containers_async`. Either way every kept
        listing goes: before the stream opened, events could have been missed.
        """
        self._watching = following
        self._forget_listings()

    def container_changed(self, project: str, container_id: str | None = None, action: str = "") -> None:
        """Told of an event of one of ``project``'s containers: its kept listing is stale.

        A (re)start also ends the container's cached start time, which the uptime in its status
        text could not tell from the previous one within that text's granularity.
        """
        self._listings.pop(project, None)
        self._listings.pop("", None)
        self._changes += 1
        if container_id and action in ("start", "restart"):
            self._started.pop(container_id, None)

    def _forget_listings(self) -> None:
        self._listings.clear()
        self._changes += 1

    def forget_start_times(self) -> None:
        """Drop cached start times and kept listings, and join no listing asked before now: after a
        lifecycle action any of them may be stale."""
        self._started.clear()
        self._generation += 1
        self._forget_listings()

    def started_at(self, container: dict[str, Any]) -> str | None:
        """Blocking :meth:`started_at_async`."""
        return run_blocking(self.started_at_async, container)

    async def started_at_async(self, container: dict[str, Any]) -> str | None:
        """When a running container started, inspecting it only when the cached value may be stale.

        The list endpoint has no start time, only "Up 5 minutes". A cached start time is reused while
        it fits that string; a restart makes the uptime shorter than the cache implies, which forces
        one inspect. So a steady stack costs no inspects at all. A restart by someone else within the
        string's granularity can show the previous start time until the uptime outgrows the cache;
        the gateway's own actions, and start events, clear the cache.
        """
        bound = uptime_upper_bound(container.get("Status", ""))
        if bound is None:
            return None
        cid = container["Id"]
        cached = self._started.get(cid)
        # While events are followed the status text may come from a kept listing, up to
        # LISTING_MAX_AGE_S old; and a start event has already dropped a restarted container's entry.
        slack = 0.5 + (LISTING_MAX_AGE_S if self._watching else 0.0)
        if cached is not None and time.time() - cached[1] <= bound + slack:
            return cached[0]
        info = await self._read_json(f"/containers/{cid}/json", missing=None)
        if info is None:
            return None
        started = str(info["State"]["StartedAt"])
        self._started[cid] = (started, parse_time(started))
        if len(self._started) > 4096:
            self._started.clear()
        return started

    def inspect(self, container_id: str) -> dict[str, Any]:
        """Blocking :meth:`inspect_async`."""
        return run_blocking(self.inspect_async, container_id)

    async def inspect_async(self, container_id: str) -> dict[str, Any]:
        """``docker inspect`` of one container.

        Raises:
            EngineRefused: 404 for a container that does not exist.
        """
        info: dict[str, Any] = await self._read_json(f"/containers/{container_id}/json")
        return info

    def own_project(self, hostname: str) -> str | None:
        """The compose project of the container this process runs in, if it runs in one (blocking)."""
        try:
            labels = self.inspect(hostname).get("Config", {}).get("Labels") or {}
        except GatewayError:
            return None
        project = labels.get(PROJECT_LABEL)
        return str(project) if project else None

    # -- streams -----------------------------------------------------------------------------------

    def log_stream(self, container_id: str, *, tail: int, since: float | None) -> AsyncGenerator[bytes, None]:
        """A container's stdout and stderr with timestamps, its last ``tail`` lines, as the engine sends them.

        Streamed: only the block in hand is held, whatever the size of the answer, and the
        connection is released when the iteration ends or stops early. ``since`` is Unix seconds;
        the epoch (or anything not after it) means from the first line. A container that is gone
        gives nothing.
        """
        return log_blocks(self.connection, container_id, tail=tail, since=since)

    def log_chunks(self, container_id: str, *, tail: int, since: float | None) -> Iterator[bytes]:
        """:meth:`log_stream` for a blocking reader (a worker thread of the loop)."""
        return iterate_blocking(lambda: self.log_stream(container_id, tail=tail, since=since))

    async def service_log(self, service_id: str, *, tail: int, since: float | None) -> bytes:
        """A swarm service's log, every task's, with timestamps and details (see :mod:`gateway.engine.streams`)."""
        return await service_log(self.connection, service_id, tail=tail, since=since)

    def events(self, filters: Mapping[str, list[str]]) -> AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]:
        """The engine's events matching ``filters``, as they happen (:func:`gateway.engine.streams.follow_events`)."""
        return follow_events(self.connection, filters)


def _copy(error: GatewayError) -> GatewayError:
    """A fresh exception for each caller that shared a failed listing (one instance raised in many
    tasks would collect all of their tracebacks)."""
    if isinstance(error, EngineRefused):
        return EngineRefused(error.status, error.reason)
    return type(error)(str(error))
