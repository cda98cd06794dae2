"""No caller can deny service to the others: failed-login, session and rate limits.

The mechanisms are tested as units with a fake clock, and the edge as a real `compose-agent
serve` process spoken to over HTTP, the way an attacker would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest

from gateway.ratelimit import LOCAL_KEY, FailureLimiter, SessionCounter, TokenBucket, client_key
from tests.gateway.conftest import GatewayProcess, start_gateway, stop_process

pytestmark = pytest.mark.anyio

INITIALIZE = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
    }
)
POST = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the mechanisms ---------------------------------------------------------------------------


def test_failures_are_refused_only_past_the_limit_and_forgotten_after_the_window() -> None:
    clock = FakeClock()
    limiter = FailureLimiter(limit=3, window=60, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1") is None
        limiter.record_failure("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 60
    assert limiter.retry_after("10.0.0.2") is None
    clock.now += 30
    assert limiter.retry_after("10.0.0.1") == 30
    clock.now += 30
    assert limiter.retry_after("10.0.0.1") is None
    assert len(limiter) == 0


def test_a_full_failure_table_forgets_the_oldest_client_not_everyone() -> None:
    clock = FakeClock()
    limiter = FailureLimiter(limit=2, window=60, max_clients=3, clock=clock)
    for client in ("a", "b", "c"):
        limiter.record_failure(client)
        limiter.record_failure(client)
        clock.now += 1
    limiter.record_failure("a")  # a failed last, so b is now the oldest
    limiter.record_failure("d")
    assert len(limiter) == 3
    assert limiter.retry_after("b") is None
    assert limiter.retry_after("a") is not None and limiter.retry_after("c") is not None


def test_ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"


def test_every_loopback_address_and_a_unix_socket_are_one_source_whatever_the_family() -> None:
    # A local caller could otherwise rotate through 127.0.0.0/8, or switch families, to start afresh.
    local = {client_key(a) for a in ("127.0.0.1", "127.0.0.2", "127.255.3.9", "::1", "::ffff:127.0.0.5", None, "")}
    assert local == {LOCAL_KEY}
    assert client_key("10.0.0.1") != LOCAL_KEY and client_key("2001:db8::1") != LOCAL_KEY
    limiter = FailureLimiter(limit=3, window=60, clock=FakeClock())
    for address in ("127.0.0.1", "127.0.0.2", "::1"):
        limiter.record_failure(client_key(address))
    assert limiter.retry_after(client_key("127.9.9.9")) is not None
    assert limiter.retry_after(client_key(None)) is not None


def test_a_token_bucket_allows_its_burst_then_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take("agent") for _ in range(3)] == [None, None, None]
    assert bucket.take("agent") == pytest.approx(0.5)
    assert bucket.take("panel") is None
    clock.now += 0.5
    assert bucket.take("agent") is None
    assert bucket.take("agent") is not None


def test_sessions_are_capped_per_principal_and_idle_ones_stop_counting() -> None:
    clock = FakeClock()
    counter = SessionCounter(limit=2, idle_timeout=300, clock=clock)
    for sid in ("s1", "s2"):
        assert counter.reserve("panel")
        counter.opened("panel", sid)
    assert not counter.reserve("panel")
    assert counter.reserve("agent")
    counter.release("agent")
    counter.begin("s1")  # a request in flight keeps s1 alive however long it takes
    clock.now += 301
    assert counter.open_count("panel") == 1
    counter.end("s1")
    assert counter.reserve("panel")
    counter.opened("panel", "s3")
    counter.closed("s1")
    assert counter.open_count("panel") == 1


# -- the edge, as a real process ----------------------------------------------------------------


@pytest.fixture
def limited_gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway with small limits, so that reaching them takes a handful of requests."""
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    proc = start_gateway(
        tmp_path,
        stacks,
        "--max-sessions-per-token",
        "4",
        "--session-idle-timeout",
        "3",
        "--token-rate",
        "50",
        "--token-burst",
        "60",
    )
    yield proc
    stop_process(proc.process)


async def initialize(http: httpx2.AsyncClient, gw: GatewayProcess, token: str) -> httpx2.Response:
    return await http.post(gw.url, content=INITIALIZE, headers={**POST, **gw.headers(token)})


async def test_failed_logins_behind_a_rotating_forwarded_for_are_refused_but_valid_tokens_and_health_are_not(
    tmp_path: Path,
) -> None:
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    gw = start_gateway(tmp_path, stacks)
    try:
        async with httpx2.AsyncClient(timeout=10) as http:
            statuses = []
            for n in range(40):
                spoofed = {"X-Forwarded-For": f"198.51.100.{n}", **POST, "Authorization": f"Bearer guess{n}"}
                statuses.append((await http.post(gw.url, content=INITIALIZE, headers=spoofed)).status_code)
            assert statuses[:30] == [401] * 30 and set(statuses[30:]) == {429}
            refused = await http.post(
                gw.url, content=INITIALIZE, headers={**POST, "X-Forwarded-For": "203.0.113.9", "Authorization": "x"}
            )
            assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
            assert "failed logins" in refused.json()["error"]["message"]

            valid = await initialize(http, gw, gw.agent_token)
            assert valid.status_code == 200 and valid.headers.get("mcp-session-id")
            assert (await http.get(f"{gw.base}/health")).status_code == 200
            # A request with no token at all is a failure too, and is refused like one.
            assert (await http.post(gw.url, content=INITIALIZE, headers=POST)).status_code == 429
    finally:
        stop_process(gw.process)


async def test_forwarded_for_is_believed_only_from_the_configured_proxies(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    gw = start_gateway(tmp_path, stacks, "--forwarded-allow-ips", "127.0.0.1")
    try:
        async with httpx2.AsyncClient(timeout=10) as http:

            async def attempt(address: str) -> int:
                headers = {**POST, "X-Forwarded-For": address, "Authorization": "Bearer guess"}
                return (await http.post(gw.url, content=INITIALIZE, headers=headers)).status_code

            assert [await attempt("198.51.100.1") for _ in range(31)][-1] == 429
            # Behind a trusted proxy, each forwarded client is counted on its own.
            assert await attempt("198.51.100.2") == 401
    finally:
        stop_process(gw.process)


async def test_the_panel_token_opening_sessions_until_refused_leaves_the_full_scope_token_able_to_open_one(
    limited_gateway: GatewayProcess,
) -> None:
    gw = limited_gateway
    async with httpx2.AsyncClient(timeout=10) as http:
        opened = []
        for _ in range(4):
            response = await initialize(http, gw, gw.panel_token)
            assert response.status_code == 200
            opened.append(response.headers["mcp-session-id"])
        refused = await initialize(http, gw, gw.panel_token)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert "4 open sessions" in refused.json()["error"]["message"]

        agent = await initialize(http, gw, gw.agent_token)
        assert agent.status_code == 200 and agent.headers.get("mcp-session-id")

        # Ending a session frees its place at once.
        deleted = await http.delete(gw.url, headers={**gw.headers(gw.panel_token), "mcp-session-id": opened[0]})
        assert deleted.status_code == 200
        assert (await initialize(http, gw, gw.panel_token)).status_code == 200


async def test_idle_sessions_are_closed_and_stop_counting(limited_gateway: GatewayProcess) -> None:
    gw = limited_gateway
    async with httpx2.AsyncClient(timeout=10) as http:
        first = (await initialize(http, gw, gw.panel_token)).headers["mcp-session-id"]
        for _ in range(3):
            assert (await initialize(http, gw, gw.panel_token)).status_code == 200
        assert (await initialize(http, gw, gw.panel_token)).status_code == 429
        ping = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "ping"})
        with anyio.fail_after(15):
            while (await initialize(http, gw, gw.panel_token)).status_code != 200:
                await anyio.sleep(0.2)
        # The server closed the idle session too: its id is no longer known. The count and the
        # SDK's own reaper run on two clocks of the same length, so the reaper may lag the count by a
        # moment under load. A request that still finds the session is activity, which restarts its
        # clock: so ask again only after a whole idle period.
        with anyio.fail_after(20):
            while True:
                gone = await http.post(
                    gw.url,
                    content=ping,
                    headers={
                        **POST,
                        **gw.headers(gw.panel_token),
                        "mcp-session-id": first,
                        "mcp-protocol-version": "2025-06-18",
                    },
                )
                if gone.status_code == 404:
                    break
                assert gone.status_code == 200, gone.text
                await anyio.sleep(3.5)


async def test_a_token_over_its_rate_is_refused_and_the_other_token_is_not(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    gw = start_gateway(tmp_path, stacks, "--token-rate", "0.2", "--token-burst", "3")
    try:
        async with httpx2.AsyncClient(timeout=10) as http:
            statuses = [(await initialize(http, gw, gw.panel_token)).status_code for _ in range(4)]
            assert statuses == [200, 200, 200, 429]
            over = await initialize(http, gw, gw.panel_token)
            assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1
            assert (await initialize(http, gw, gw.agent_token)).status_code == 200
    finally:
        stop_process(gw.process)
