"""Answers read as they come: a container's log, a service's log, and the engine's event stream.

Each holds only the block in hand, whatever the size of the answer, and gives its channel back (or
closes it) when the reading ends or stops early. A log's reads each wait at most the engine's
timeout (a stalled engine), the event stream as long as it is quiet.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from .connection import Connection
from .logs import Frames
from .transport import EngineRefused, Response

__all__ = ["follow_events", "log_blocks", "service_log"]


def _log_query(tail: int, since: float | None, *, details: bool = False) -> dict[str, str | int | bool]:
    query: dict[str, str | int | bool] = {"stdout": True, "stderr": True, "timestamps": True, "tail": tail}
    if details:
        query["details"] = True
    if since is not None and since > 0:  # the engine's own "no lower bound" is to leave it out
        query["since"] = f"{since:.9f}"
    return query


async def log_blocks(
    connection: Connection, container_id: str, *, tail: int, since: float | None
) -> AsyncGenerator[bytes, None]:
    """A container's stdout and stderr with timestamps, its last ``tail`` lines, block by block.

    ``since`` is Unix seconds; the epoch (or anything not after it) means from the first line. A
    container that is gone gives nothing. The answer's first byte says whether it is framed (a
    frame header starts with 0, 1 or 2, a timestamped TTY line with a digit), which spares an
    inspect per call.

    Raises:
        EngineUnavailable: the engine cannot be reached, or stalled.
        EngineRefused: another error status.
    """
    try:
        async with connection.stream(f"/containers/{container_id}/logs", _log_query(tail, since)) as response:
            async for data in _payload(response, connection.timeout):
                yield data
    except EngineRefused as exc:
        if exc.status != 404:
            raise


async def service_log(connection: Connection, service_id: str, *, tail: int, since: float | None) -> bytes:
    """A swarm service's log, every task's, with timestamps and details (the task of each line).

    Raises:
        EngineUnavailable: the engine cannot be reached, or stalled.
        EngineRefused: an error status (404 for a service that is gone).
    """
    parts = []
    async with connection.stream(f"/services/{service_id}/logs", _log_query(tail, since, details=True)) as response:
        async for data in _payload(response, connection.timeout):
            parts.append(data)
    return b"".join(parts)


async def _payload(response: Response, idle_timeout: float) -> AsyncIterator[bytes]:
    frames = Frames()
    async for block in response.blocks(idle_timeout):
        data = frames.feed(block)
        if data:
            yield data


@asynccontextmanager
async def follow_events(
    connection: Connection, filters: Mapping[str, list[str]]
) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
    """The engine's events matching ``filters``, one dict each, as they happen, for as long as it is open.

    Opening is bounded by the engine's timeout; the stream then waits as long as nothing happens.
    It ends (the iteration raises :class:`~gateway.errors.EngineUnavailable`) when the engine closes it.

    Raises:
        EngineUnavailable: the stream cannot be opened.
        EngineRefused: the engine refused it.
    """
    async with connection.stream("/events", {"filters": filters}) as response:
        yield _events(response)


async def _events(response: Response) -> AsyncIterator[dict[str, Any]]:
    pending = b""
    async for block in response.blocks():
        pending += block
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                event: dict[str, Any] = json.loads(line)
                yield event
