"""Streams that carry nothing end on time and give their session place back.

The mechanism is tested with a plain ASGI app on real time; the gateway's SSE sessions and
Streamable HTTP GET streams as a real `compose-agent serve` spoken to over HTTP.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx2
import pytest

from gateway.mcp.streams import carries_data, serve_stream
from tests.gateway.conftest import GatewayProcess, start_gateway, stop_process
from tests.polling import eventually

pytestmark = pytest.mark.anyio

IDLE_S = 2.0
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
POST = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def test_keep_alive_comments_carry_nothing_and_events_do() -> None:
    assert not carries_data(b"")
    assert not carries_data(b": ping - 2026-12-03 10:00:00\r\n\r\n")
    assert not carries_data(b"\r\n")
    assert carries_data(b"event: message\r\ndata: {}\r\n\r\n")
    assert carries_data(b": ping\r\ndata: x\r\n\r\n")


async def _stream_app(chunks: list[tuple[float, bytes]]) -> object:
    """An ASGI app that streams ``chunks`` (delay before each, body), then waits forever."""

    async def app(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        for delay, body in chunks:
            await anyio.sleep(delay)
            await send({"type": "http.response.body", "body": body, "more_body": True})  # type: ignore[operator]
        await anyio.sleep_forever()

    return app


async def _run(app: object, idle: float) -> tuple[float, list[dict[str, object]]]:
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        await anyio.sleep_forever()
        raise AssertionError

    streams: set[anyio.CancelScope] = set()
    started = time.monotonic()
    with anyio.fail_after(10):
        await serve_stream(app, {"path": "/sse"}, receive, send, idle_timeout=idle, streams=streams)  # type: ignore[arg-type]
    assert not streams
    return time.monotonic() - started, sent


async def test_a_stream_of_pings_alone_ends_after_the_idle_time_and_ends_cleanly() -> None:
    pings = [(0.1, b": ping\r\n\r\n")] * 30
    took, sent = await _run(await _stream_app(pings), 0.5)
    assert 0.5 <= took < 1.5
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_a_stream_that_carries_events_stays_open_until_they_stop() -> None:
    events = [(0.1, b"data: {}\r\n\r\n")] * 15
    took, sent = await _run(await _stream_app(events), 0.5)
    # 1.5 s of events, then the idle time.
    assert 1.9 <= took < 3.0
    assert sum(1 for m in sent if m.get("body") == b"data: {}\r\n\r\n") == 15


# -- the gateway ----------------------------------------------------------------------------------


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    gw = start_gateway(
        tmp_path,
        stacks,
        "--stream-idle-timeout",
        str(IDLE_S),
        "--max-sessions-per-token",
        "1",
        "--session-idle-timeout",
        str(IDLE_S),
    )
    yield gw
    stop_process(gw.process)


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    event = "message"
    async for line in lines:
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            yield event, line.split(":", 1)[1].strip()
            event = "message"


async def test_an_idle_sse_session_ends_on_time_and_frees_its_place(gateway: GatewayProcess) -> None:
    gw = gateway
    async with httpx2.AsyncClient(timeout=30) as http:
        async with http.stream("GET", f"{gw.base}/sse", headers=gw.headers()) as stream:
            assert stream.status_code == 200
            opened = time.monotonic()
            events = _events(stream.aiter_lines())
            assert (await anext(events))[0] == "endpoint"
            # While it lives, it holds the token's only session place.
            second = await http.get(f"{gw.base}/sse", headers=gw.headers())
            assert second.status_code == 429
            with anyio.fail_after(20):
                async for _ in events:
                    pass  # nothing comes, and then the stream ends
            lasted = time.monotonic() - opened
        assert IDLE_S - 0.5 <= lasted <= IDLE_S + 5
        # Ended, it gave its place back: a new session opens at once.
        async with http.stream("GET", f"{gw.base}/sse", headers=gw.headers()) as again:
            assert again.status_code == 200


async def test_an_sse_session_in_use_is_kept_past_the_idle_time(gateway: GatewayProcess) -> None:
    gw = gateway
    async with httpx2.AsyncClient(timeout=30) as http:
        async with http.stream("GET", f"{gw.base}/sse", headers=gw.headers()) as stream:
            events = _events(stream.aiter_lines())
            kind, endpoint = await anext(events)
            assert kind == "endpoint"
            opened = time.monotonic()
            request = dict(INITIALIZE)
            # Three idle times' worth of traffic: every answer on the stream is activity.
            for n in range(int(3 * IDLE_S / 0.5)):
                request["id"] = n
                posted = await http.post(
                    f"{gw.base}{endpoint}", content=json.dumps(request), headers={**gw.headers(), **POST}
                )
                assert posted.status_code == 202
                kind, data = await anext(events)
                assert kind == "message" and json.loads(data)["id"] == n
                await anyio.sleep(0.5)
            assert time.monotonic() - opened > 2 * IDLE_S


async def test_an_idle_streamable_get_stream_ends_on_time_and_its_session_then_frees_its_place(
    gateway: GatewayProcess,
) -> None:
    gw = gateway
    async with httpx2.AsyncClient(timeout=30) as http:
        opened = await http.post(gw.url, content=json.dumps(INITIALIZE), headers={**POST, **gw.headers()})
        assert opened.status_code == 200
        session = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
        initialized = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert (await http.post(gw.url, content=initialized, headers={**POST, **gw.headers(), **session})).is_success
        async with http.stream(
            "GET", gw.url, headers={**gw.headers(), **session, "Accept": "text/event-stream"}
        ) as stream:
            assert stream.status_code == 200
            started = time.monotonic()
            with anyio.fail_after(20):
                async for _ in stream.aiter_bytes():
                    pass
            lasted = time.monotonic() - started
        assert IDLE_S - 0.5 <= lasted <= IDLE_S + 5
        # With its stream gone the session idles out, and the token's only place comes free.

        async def new_session_opens() -> bool:
            again = await http.post(gw.url, content=json.dumps(INITIALIZE), headers={**POST, **gw.headers()})
            return again.status_code == 200

        await eventually(new_session_opens, timeout=20, interval=0.5, what="a new session once the idle one is gone")
