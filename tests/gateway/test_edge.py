"""The edge holds: callers without a token cannot take a served gateway down.

Each test runs a real `compose-agent serve` under a low descriptor limit (``prlimit --nofile=256``,
which leaves it room for 128 connections) and attacks it over real sockets from the loopback
address, while a caller with a token uses it from another address of this machine (so the two are
different peers to the gateway).
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest

from gateway.mcp.edge import FD_RESERVE
from gateway.mcp.health import DESCRIPTOR_FLOOR
from tests.gateway.attackers import Flood, local_address, open_descriptors, read_until_closed
from tests.gateway.conftest import GatewayProcess, start_gateway, stop_process
from tests.polling import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.docker]

NOFILE = 256
CAPACITY = NOFILE - FD_RESERVE
INITIALIZE = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
    }
)
POST = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
# What the gateway may write to its log in a whole attack: a few summary lines, not one per connection.
LOG_BOUND = 30_000


@pytest.fixture(scope="module")
def other_address() -> str:
    return local_address()


def edge_gateway(tmp_path: Path, other: str, *args: str) -> GatewayProcess:
    stacks = tmp_path / "stacks"
    stacks.mkdir(exist_ok=True)
    return start_gateway(
        tmp_path,
        stacks,
        "--host",
        "0.0.0.0",
        "--allowed-hosts",
        f"127.0.0.1:*,{other}:*",
        *args,
        prefix=("prlimit", f"--nofile={NOFILE}:{NOFILE}", "--"),
    )


@pytest.fixture
def gateway_under_limit(tmp_path: Path, other_address: str) -> Iterator[GatewayProcess]:
    gw = edge_gateway(tmp_path, other_address)
    yield gw
    stop_process(gw.process)


def port_of(gw: GatewayProcess) -> int:
    return int(gw.base.rsplit(":", 1)[1])


async def initialize_from(address: str, gw: GatewayProcess, token: str) -> int:
    """One MCP initialize on a connection of its own, from ``address``; the HTTP status (0: no answer)."""
    url = f"http://{address}:{port_of(gw)}/mcp"
    async with httpx2.AsyncClient(timeout=10) as http:
        try:
            response = await http.post(url, content=INITIALIZE, headers={**POST, **gw.headers(token)})
        except httpx2.HTTPError as exc:
            print("initialize failed:", repr(exc))
            return 0
    return response.status_code


async def health_of(address: str, gw: GatewayProcess) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.get(f"http://{address}:{port_of(gw)}/health")


async def flood_opened(flood: Flood, at_least: int) -> None:
    async def enough() -> bool:
        return flood.opened + flood.failed >= at_least

    await eventually(enough, timeout=60, what=f"the flood opening {at_least} connections")


async def test_a_slowloris_and_a_flood_from_one_address_leave_a_caller_with_a_token_served(
    gateway_under_limit: GatewayProcess, other_address: str
) -> None:
    gw = gateway_under_limit
    slow = Flood("127.0.0.1", port_of(gw), 700, slow=True)
    idle = Flood("127.0.0.1", port_of(gw), 700)
    with slow, idle:
        await flood_opened(slow, 500)
        await flood_opened(idle, 500)
        statuses = [await initialize_from(other_address, gw, gw.agent_token) for _ in range(20)]
        health = await health_of(other_address, gw)
        descriptors = open_descriptors(gw.process.pid)
    assert statuses == [200] * 20
    assert health.status_code == 200, health.text
    # The connections stayed within the cap, which the descriptor limit set (see the descriptors above).
    assert health.json()["connections"] <= CAPACITY
    assert descriptors < NOFILE - DESCRIPTOR_FLOOR
    # The attack really ran: four times the descriptors the gateway has, accepted and then closed.
    assert slow.opened + idle.opened > 4 * NOFILE
    log = gw.stderr_text()
    assert "opened more than 32 unauthenticated connections: closing its oldest" in log
    assert len(log) < LOG_BOUND, log[-3000:]
    assert "out of system resource" not in log and "Too many open files" not in log


async def test_at_the_connection_cap_a_caller_with_a_token_still_gets_in_and_its_stream_is_kept(
    tmp_path: Path, other_address: str
) -> None:
    gw = edge_gateway(tmp_path, other_address, "--max-connections-per-peer", "100000")
    try:
        # A session with a token, opened before the flood: it must outlive it.
        async with httpx2.AsyncClient(timeout=30) as http:
            url = f"http://{other_address}:{port_of(gw)}/sse"
            async with http.stream("GET", url, headers=gw.headers()) as stream:
                lines = stream.aiter_lines()
                endpoint = await _sse_data(lines, "endpoint")
                with Flood("127.0.0.1", port_of(gw), 1200) as flood:
                    await flood_opened(flood, 1000)
                    statuses = [await initialize_from(other_address, gw, gw.agent_token) for _ in range(20)]
                    health = await health_of(other_address, gw)
                # The stream is still there: a message on its session is answered on it.
                posted = await http.post(
                    f"http://{other_address}:{port_of(gw)}{endpoint}",
                    content=INITIALIZE,
                    headers={**gw.headers(), "Content-Type": "application/json"},
                )
                assert posted.status_code == 202
                reply = json.loads(await _sse_data(lines, "message"))
                assert reply["id"] == 1 and "result" in reply
    finally:
        stop_process(gw.process)
    assert statuses == [200] * 20
    assert health.status_code == 200 and health.json()["connections"] <= CAPACITY
    log = gw.stderr_text()
    assert "connection cap reached" in log and "closing the oldest unauthenticated connections" in log
    assert len(log) < LOG_BOUND, log[-3000:]


async def _sse_data(lines: object, event: str) -> str:
    """The data of the next SSE event named ``event``."""
    current = None
    with anyio.fail_after(30):
        async for line in lines:  # type: ignore[attr-defined]
            if line.startswith("event:"):
                current = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and current == event:
                return str(line.split(":", 1)[1].strip())
    raise AssertionError(f"the stream ended before an {event!r} event")


def test_a_request_head_or_body_sent_a_byte_at_a_time_is_cut_off_at_its_timeout(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    gw = start_gateway(tmp_path, stacks, "--header-timeout", "2", "--body-timeout", "2")
    port = port_of(gw)
    try:
        # Nothing at all, then a head a byte at a time: both end at the header timeout.
        with socket.create_connection(("127.0.0.1", port)) as idle:
            _, idle_for = read_until_closed(idle, 15)
        slow_head_for = _trickle(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ", b"x")
        # A token's request whose body comes a byte at a time ends at the body timeout.
        head = (
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Accept: application/json, text/event-stream\r\n"
            f"Authorization: Bearer {gw.agent_token}\r\nContent-Length: 500\r\n\r\n"
        ).encode()
        slow_body_for = _trickle(port, head, b" ")
        # Without a token the body is not even waited for: 401, then the rest of it is cut off too.
        unauthenticated = head.replace(gw.agent_token.encode(), b"wrong")
        slow_refused_for = _trickle(port, unauthenticated, b" ")
    finally:
        stop_process(gw.process)
    for waited in (idle_for, slow_head_for, slow_body_for, slow_refused_for):
        assert 1.5 <= waited <= 8, (idle_for, slow_head_for, slow_body_for, slow_refused_for)
    assert "request head took longer than 2 s" in gw.stderr_text()


def _trickle(port: int, head: bytes, byte: bytes, limit: float = 20) -> float:
    """Send ``head``, then ``byte`` every 0.2 s until the server closes; how long it kept the connection."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        started = time.monotonic()
        sock.settimeout(0.2)
        while time.monotonic() - started < limit:
            try:
                sock.send(byte)
                if sock.recv(65536) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        return time.monotonic() - started


async def test_huge_heads_are_refused_and_keep_alive_floods_stay_cheap(gateway_under_limit: GatewayProcess) -> None:
    gw = gateway_under_limit
    port = port_of(gw)
    # A head still incomplete after 16 KB is refused at once: a megabyte of one header, or of many.
    for head in (
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: " + b"a" * 1_000_000 + b"\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X: 1\r\n" * 200_000 + b"\r\n",
    ):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            try:
                sock.sendall(head)
            except OSError:
                pass  # refused while still sending: that is the point
            answer, took = read_until_closed(sock, 10)
        assert answer.startswith(b"HTTP/1.1 400") and took < 5
    async with httpx2.AsyncClient(timeout=10) as http:
        # Many small requests on one kept-alive connection: each answered, none a burden.
        healths = [(await http.get(f"{gw.base}/health")).status_code for _ in range(300)]
        # Without a token: refused, and soon refused cheaply.
        guesses = [
            (await http.post(gw.url, content=INITIALIZE, headers={**POST, "Authorization": "Bearer guess"})).status_code
            for _ in range(100)
        ]
    assert set(healths) == {200}
    assert guesses[:30] == [401] * 30 and set(guesses[30:]) == {429}
    assert (await initialize_from("127.0.0.1", gw, gw.agent_token)) == 200


async def test_an_sse_reconnect_storm_is_held_to_the_tokens_session_places(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    gw = start_gateway(tmp_path, stacks, "--max-sessions-per-token", "20")
    try:
        async with httpx2.AsyncClient(timeout=30, limits=httpx2.Limits(max_connections=100)) as http:
            statuses: list[int] = []
            async with anyio.create_task_group() as tg:
                done = anyio.Event()

                async def hold_stream() -> None:
                    async with http.stream("GET", f"{gw.base}/sse", headers=gw.headers(gw.panel_token)) as stream:
                        statuses.append(stream.status_code)
                        if stream.status_code == 200:
                            await done.wait()

                async def all_answered() -> bool:
                    return len(statuses) == 40

                for _ in range(40):
                    tg.start_soon(hold_stream)
                await eventually(all_answered, what="40 SSE connections answered")
                done.set()
            # The other token is not touched by the panel's storm.
            assert (await initialize_from("127.0.0.1", gw, gw.agent_token)) == 200
            # Reconnecting over and over, one at a time, never runs out of places: each ended stream gave its back.
            for _ in range(60):
                async with http.stream("GET", f"{gw.base}/sse", headers=gw.headers(gw.panel_token)) as stream:
                    assert stream.status_code == 200
    finally:
        stop_process(gw.process)
    assert statuses.count(200) == 20 and statuses.count(429) == 20


async def test_at_a_cap_full_of_authenticated_connections_new_ones_are_refused_at_once_and_said_once(
    tmp_path: Path,
) -> None:
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    gw = start_gateway(tmp_path, stacks, "--max-connections", "4", "--keep-alive-timeout", "120")
    port = port_of(gw)
    kept: list[http.client.HTTPConnection] = []

    def ask(connection: http.client.HTTPConnection) -> int:
        connection.request("GET", "/mcp", headers={**gw.headers(), "Accept": "text/event-stream"})
        response = connection.getresponse()
        response.read()
        return response.status

    try:
        # Four connections with a token, kept alive: none of them may be closed to make room.
        for _ in range(4):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            assert ask(connection) < 500
            kept.append(connection)
        refused_in = []
        for _ in range(50):
            with socket.create_connection(("127.0.0.1", port)) as newcomer:
                _, took = read_until_closed(newcomer, 5)
                refused_in.append(took)
        # The kept ones still work, on the same connections.
        for connection in kept:
            assert ask(connection) < 500
            assert connection.sock is not None
    finally:
        for connection in kept:
            connection.close()
        stop_process(gw.process)
    assert max(refused_in) < 1.0
    log = gw.stderr_text()
    assert log.count("every one authenticated or busy: refusing new connections") == 1
    assert log.count("refused at the cap") <= 1


def test_the_edge_limits_are_settings_of_their_own_validated_at_start() -> None:
    from gateway.config import load_settings
    from gateway.errors import ConfigError

    settings = load_settings(
        {"COMPOSE_AGENT_MAX_CONNECTIONS": "300", "COMPOSE_AGENT_HEADER_TIMEOUT": "4.5"}, body_timeout=12.0
    )
    assert (settings.max_connections, settings.header_timeout, settings.body_timeout) == (300, 4.5, 12.0)
    assert settings.compose_budget.memory_mb == 2048
    assert load_settings({"COMPOSE_AGENT_COMPOSE_MEMORY_MB": "0"}).compose_budget.memory_mb is None
    with pytest.raises(ConfigError, match="COMPOSE_AGENT_MAX_CONNECTIONS_PER_PEER"):
        load_settings({"COMPOSE_AGENT_MAX_CONNECTIONS_PER_PEER": "0"})
