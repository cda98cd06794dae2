"""Reads through the Docker Engine API: fast, structured, one list call per ``ps``.

Everything here is blocking (docker-py, through :mod:`gateway.engine.connection`, which translates
its errors), and the operations layer calls it from worker threads, except the ``*_async`` reads of
``ps``, which run on the event loop through :mod:`gateway.engine.transport` when the engine is a
Unix socket.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from anyio import to_thread

from ..errors import EngineUnavailable, GatewayError
from .connection import DEFAULT_DOCKER_HOST, VERSION_REFUSED, Connection, explanation, negotiate_version, not_found
from .containers import ONEOFF_LABEL, PROJECT_LABEL, parse_time, uptime_upper_bound
from .logs import demultiplex
from .transport import EngineHTTP, EngineRefused

if TYPE_CHECKING:
    import docker

__all__ = ["Engine", "LISTING_MAX_AGE_S", "negotiate_version"]

logger = logging.getLogger(__name__)

# How much of a streamed log answer is read at a time.
_READ_CHUNK = 64 * 1024
#: The longest a listing kept current by the event stream answers ps before it is asked again. It
#: bounds what an event the engine dropped or delayed could hide; events end a listing far sooner.
LISTING_MAX_AGE_S = 1.0


@dataclass
class _Flight:
    done: anyio.Event
    result: list[dict[str, Any]] | None = None
    error: GatewayError | None = None


class Engine:
    """A thin, thread-safe wrapper over docker-py's low-level client.

    The API version is negotiated once per connection (one ``GET /version``) and kept with the client;
    a lost connection or a refused version drops the client, so the next call negotiates again (an
    engine upgraded under a running gateway is spoken to in its own terms).
    """

    def __init__(self, docker_host: str | None = None, *, timeout: float = 10.0) -> None:
        self.docker_host = docker_host or DEFAULT_DOCKER_HOST
        self._timeout = timeout
        self.connection = Connection(self.docker_host, timeout=timeout)
        # container id -> (StartedAt as given, as epoch seconds); see started_at().
        self._started: dict[str, tuple[str, float]] = {}
        unix = self.docker_host.startswith("unix://")
        self._reader = EngineHTTP(self.docker_host[len("unix://") :], timeout=timeout) if unix else None
        if self._reader is not None:
            # A connection found lost by a blocking call takes the async reader's pooled sockets with it.
            self.connection.on_lost(self._reader.close)
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
    def client(self) -> docker.APIClient:
        """docker-py's client for this engine, connected (and the version negotiated) on first use."""
        return self.connection.client

    @property
    def api_version(self) -> str:
        """The negotiated Engine API version (negotiating now if there is no connection yet)."""
        return self.connection.api_version

    def translate(self) -> AbstractContextManager[None]:
        """A context that turns docker-py errors into gateway errors, for callers of :attr:`client`."""
        return self.connection.translate()

    def close(self) -> None:
        self.connection.close()
        if self._reader is not None:
            self._reader.close()

    def _disconnect(self) -> None:
        self.close()

    def ping(self) -> None:
        with self.connection.translate():
            self.client.ping()

    def project_containers(self, project: str | None = None) -> list[dict[str, Any]]:
        """All containers of one compose project (or of every project), one-off ``run`` containers excluded."""
        label = f"{PROJECT_LABEL}={project}" if project else PROJECT_LABEL
        with self.connection.translate():
            containers = self.client.containers(all=True, filters={"label": label})
        return [c for c in containers if (c.get("Labels") or {}).get(ONEOFF_LABEL, "False") != "True"]

    async def _read_json(self, reader: EngineHTTP, path: str, query: dict[str, str] | None = None) -> Any:
        """``GET`` on the event loop, in the connection's negotiated API version; None for a 404."""
        # Negotiating is a blocking request, made once per connection.
        version = self.connection.negotiated or await to_thread.run_sync(lambda: self.api_version)
        try:
            return await reader.get_json(str(version), path, query, missing=None)
        except EngineUnavailable:
            self._disconnect()
            raise
        except EngineRefused as exc:
            if exc.status == 400 and VERSION_REFUSED in exc.reason:
                self._disconnect()
                raise EngineUnavailable(
                    f"the Docker engine refused this connection's API version ({exc.reason}); "
                    "it is negotiated again on the next call, so retry"
                ) from exc
            raise

    async def project_containers_async(self, project: str | None = None) -> list[dict[str, Any]]:
        """:meth:`project_containers` on the event loop (a worker thread for a TCP engine).

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
        if self._reader is None:
            return await to_thread.run_sync(self.project_containers, project)
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
            containers = await self._read_json(
                self._reader, "/containers/json", {"all": "1", "filters": json.dumps({"label": [label]})}
            )
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

    async def started_at_async(self, container: dict[str, Any]) -> str | None:
        """:meth:`started_at` on the event loop: a cached start time costs no request at all."""
        bound = uptime_upper_bound(container.get("Status", ""))
        if bound is None:
            return None
        cached = self._fresh_start(container["Id"], bound)
        if cached is not None:
            return cached
        if self._reader is None:
            return await to_thread.run_sync(self.started_at, container)
        info = await self._read_json(self._reader, f"/containers/{container['Id']}/json")
        return None if info is None else self._remember_start(container["Id"], str(info["State"]["StartedAt"]))

    def _fresh_start(self, cid: str, bound: float) -> str | None:
        cached = self._started.get(cid)
        # While events are followed the status text may come from a kept listing, up to
        # LISTING_MAX_AGE_S old; and a start event has already dropped a restarted container's entry.
        slack = 0.5 + (LISTING_MAX_AGE_S if self._watching else 0.0)
        if cached is not None and time.time() - cached[1] <= bound + slack:
            return cached[0]
        return None

    def _remember_start(self, cid: str, started: str) -> str:
        self._started[cid] = (started, parse_time(started))
        if len(self._started) > 4096:
            self._started.clear()
        return started

    def started_at(self, container: dict[str, Any]) -> str | None:
        """When a running container started, inspecting it only when the cached value may be stale.

        The list endpoint has no start time, only "Up 5 minutes". A cached start time is reused while
        it fits that string; a restart makes the uptime shorter than the cache implies, which forces
        one inspect. So a steady stack costs no inspects at all. A restart by someone else within the
        string's granularity can show the previous start time until the uptime outgrows the cache;
        the gateway's own actions clear the cache.
        """
        bound = uptime_upper_bound(container.get("Status", ""))
        if bound is None:
            return None
        cid = container["Id"]
        cached = self._fresh_start(cid, bound)
        if cached is not None:
            return cached
        with self.connection.translate():
            try:
                raw = self.client.inspect_container(cid)["State"]["StartedAt"]
            except not_found():
                return None
        return self._remember_start(cid, str(raw))

    def forget_start_times(self) -> None:
        """Drop cached start times and kept listings, and join no listing asked before now: after a
        lifecycle action any of them may be stale."""
        self._started.clear()
        self._generation += 1
        self._forget_listings()

    def inspect(self, container_id: str) -> dict[str, Any]:
        with self.connection.translate():
            result: dict[str, Any] = self.client.inspect_container(container_id)
            return result

    def log_chunks(self, container_id: str, *, tail: int, since: float | None) -> Iterator[bytes]:
        """A container's stdout and stderr with timestamps, its last ``tail`` lines, as the engine sends them.

        Streamed: only the chunk in hand is held, whatever the size of the answer, and the
        connection is released when the iteration ends or stops early. ``since`` is Unix seconds;
        the epoch (or anything not after it) means from the first line. A container that is gone
        gives nothing.

        The request goes through docker-py's own session rather than ``logs(stream=True)``, whose
        stream cannot be released early without its private response, turns the read timeout off,
        and costs an inspect per call to learn whether the container has a TTY (the answer's first
        byte says so here: a frame header starts with 0, 1 or 2, a timestamped line with a digit).
        """
        params: dict[str, Any] = {"stdout": 1, "stderr": 1, "timestamps": 1, "follow": 0, "tail": tail}
        if since is not None and since > 0:  # the engine's own "no lower bound" is to leave it out
            params["since"] = f"{since:.9f}"
        with self.connection.translate():
            api = self.client
            response = api.get(
                f"{api.base_url}/v{api.api_version}/containers/{container_id}/logs",
                params=params,
                stream=True,
                timeout=self._timeout,
            )
            with closing(response):
                if response.status_code == 404:
                    return
                if response.status_code != 200:
                    raise GatewayError(f"Docker engine error: {response.status_code} {explanation(response)}")
                # Whole blocks rather than iter_content's one piece per HTTP chunk: the engine sends
                # each line as a chunk of its own, and a piece at a time costs a third more.
                yield from demultiplex(iter(lambda: response.raw.read(_READ_CHUNK), b""))

    def own_project(self, hostname: str) -> str | None:
        """The compose project of the container this process runs in, if it runs in one."""
        try:
            labels = self.inspect(hostname).get("Config", {}).get("Labels") or {}
        except GatewayError:
            return None
        project = labels.get(PROJECT_LABEL)
        return str(project) if project else None


def _copy(error: GatewayError) -> GatewayError:
    """A fresh exception for each caller that shared a failed listing (one instance raised in many
    tasks would collect all of their tracebacks)."""
    if isinstance(error, EngineRefused):
        return EngineRefused(error.status, error.reason)
    return type(error)(str(error))
