"""The async Engine API reader that serves ps: against the real engine, and against a scripted peer.

The scripted peer (a Unix socket the test serves) only isolates HTTP framing that the real engine
chooses by itself (chunked or not) and a peer that never answers; the real engine is tested too.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
import docker
import pytest
from anyio.abc import SocketStream

from gateway.engine.client import Engine
from gateway.engine.transport import EngineHTTP
from gateway.errors import EngineUnavailable, GatewayError

pytestmark = pytest.mark.anyio

SOCKET = "/var/run/docker.sock"


@pytest.mark.docker
async def test_the_listing_is_the_one_docker_py_gets(docker_client: docker.DockerClient, busybox_image: str) -> None:
    project = f"eh{secrets.token_hex(4)}"
    labels = {"com.docker.compose.project": project, "com.docker.compose.service": "one"}
    container = docker_client.containers.create(busybox_image, ["sleep", "60"], labels=labels)
    try:
        reader = EngineHTTP(SOCKET)
        query = {"all": "1", "filters": json.dumps({"label": [f"com.docker.compose.project={project}"]})}
        listed = await reader.get_json("1.41", "/containers/json", query)
        expected = docker_client.api.containers(all=True, filters={"label": f"com.docker.compose.project={project}"})
        assert [c["Id"] for c in listed] == [c["Id"] for c in expected] == [container.id]
        assert listed[0]["Labels"] == expected[0]["Labels"]
        rows = await Engine().project_containers_async(project)
        assert [c["Id"] for c in rows] == [container.id]
    finally:
        container.remove(force=True)


@pytest.mark.docker
async def test_a_missing_container_is_the_default_given_and_other_errors_keep_the_engines_words(
    docker_client: docker.DockerClient,
) -> None:
    reader = EngineHTTP(SOCKET)
    assert await reader.get_json("1.41", "/containers/nope-nope/json", missing=None) is None
    with pytest.raises(GatewayError, match="404 No such container: nope-nope"):
        await reader.get_json("1.41", "/containers/nope-nope/json")


async def test_an_absent_socket_is_an_unavailable_engine_named_by_its_socket(tmp_path: Path) -> None:
    reader = EngineHTTP(str(tmp_path / "docker.sock"))
    with pytest.raises(EngineUnavailable, match=f"unix://{tmp_path}/docker.sock .*check that dockerd is running"):
        await reader.get_json("1.41", "/containers/json")


@asynccontextmanager
async def scripted_engine(path: Path, answer: Callable[[SocketStream, bytes], object]) -> AsyncIterator[list[bytes]]:
    """A Unix socket that reads one request and runs ``answer(connection, request)``; yields the requests."""
    requests: list[bytes] = []
    listener = await anyio.create_unix_listener(path)

    async def serve(stream: SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            requests.append(data)
            await answer(stream, data)  # type: ignore[misc]

    async with anyio.create_task_group() as tg, listener:
        tg.start_soon(listener.serve, serve)
        yield requests
        tg.cancel_scope.cancel()


async def test_chunked_bodies_split_anywhere_are_read_whole(tmp_path: Path) -> None:
    body = json.dumps([{"Id": f"c{n}", "Labels": {}} for n in range(200)]).encode()
    chunks = [body[i : i + 700] for i in range(0, len(body), 700)]
    wire = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    wire += b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"

    async def answer(stream: SocketStream, request: bytes) -> None:
        for start in range(0, len(wire), 333):  # boundaries fall inside sizes, CRLFs and data alike
            await stream.send(wire[start : start + 333])

    async with scripted_engine(tmp_path / "e.sock", answer) as requests:
        listed = await EngineHTTP(str(tmp_path / "e.sock")).get_json("1.41", "/containers/json", {"all": "1"})
    assert [c["Id"] for c in listed] == [f"c{n}" for n in range(200)]
    assert requests[0].startswith(b"GET /v1.41/containers/json?all=1 HTTP/1.1\r\n")


async def test_a_length_delimited_body_and_an_error_status_are_read(tmp_path: Path) -> None:
    async def answer(stream: SocketStream, request: bytes) -> None:
        message = b'{"message":"client version 1.41 is too old"}'
        await stream.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(message) + message)

    async with scripted_engine(tmp_path / "e.sock", answer):
        with pytest.raises(GatewayError, match="400 client version 1.41 is too old"):
            await EngineHTTP(str(tmp_path / "e.sock")).get_json("1.41", "/containers/json")


async def test_an_engine_that_never_answers_is_unavailable_after_the_timeout(tmp_path: Path) -> None:
    async def answer(stream: SocketStream, request: bytes) -> None:
        await anyio.sleep_forever()

    async with scripted_engine(tmp_path / "e.sock", answer):
        with anyio.fail_after(10), pytest.raises(EngineUnavailable, match="no answer within 0.3 s"):
            await EngineHTTP(str(tmp_path / "e.sock"), timeout=0.3).get_json("1.41", "/containers/json")


def version_or_listing(listing: list[dict[str, object]], delay: anyio.Event | None = None) -> Callable[..., object]:
    """An engine that answers /version (for the negotiation) and a container listing, slowly if asked."""

    async def answer(stream: SocketStream, request: bytes) -> None:
        if b"/version" in request.split(b"\r\n", 1)[0]:
            body = json.dumps({"ApiVersion": "1.41", "MinAPIVersion": "1.12", "Version": "20.10"}).encode()
        else:
            if delay is not None:
                await delay.wait()
            body = json.dumps(listing).encode()
        await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)

    return answer


def listings(requests: list[bytes]) -> int:
    return sum(1 for r in requests if b"/containers/json" in r.split(b"\r\n", 1)[0])


async def test_concurrent_listings_of_one_project_share_one_engine_request(tmp_path: Path) -> None:
    release = anyio.Event()
    listing: list[dict[str, object]] = [{"Id": "c1", "Labels": {"com.docker.compose.project": "p"}}]
    async with scripted_engine(tmp_path / "e.sock", version_or_listing(listing, release)) as requests:
        engine = Engine(f"unix://{tmp_path}/e.sock")
        await anyio.to_thread.run_sync(lambda: engine.api_version)  # negotiate first, as a running gateway has
        answers: list[list[dict[str, object]]] = []

        async def ps() -> None:
            answers.append(await engine.project_containers_async("p"))

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(ps)
            with anyio.fail_after(10):
                while listings(requests) < 1:
                    await anyio.sleep(0.01)
            release.set()
        engine.close()
    assert [[c["Id"] for c in a] for a in answers] == [["c1"]] * 5
    assert listings(requests) == 1


async def test_a_listing_asked_before_a_lifecycle_action_is_not_shared_after_it(tmp_path: Path) -> None:
    release = anyio.Event()
    async with scripted_engine(tmp_path / "e.sock", version_or_listing([], release)) as requests:
        engine = Engine(f"unix://{tmp_path}/e.sock")
        await anyio.to_thread.run_sync(lambda: engine.api_version)
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.project_containers_async, "p")
            with anyio.fail_after(10):
                while listings(requests) < 1:
                    await anyio.sleep(0.01)
            engine.forget_start_times()  # what the write path does after up, restart, ...
            tg.start_soon(engine.project_containers_async, "p")
            with anyio.fail_after(10):
                while listings(requests) < 2:
                    await anyio.sleep(0.01)
            release.set()
        engine.close()
    assert listings(requests) == 2


@asynccontextmanager
async def keepalive_engine(path: Path, close_after: int | None = None) -> AsyncIterator[list[tuple[int, bytes]]]:
    """An engine that answers every request on a connection, as dockerd does, until the client closes.

    With ``close_after``, it closes each connection after that many answers, without saying so in
    the answer (as an engine that restarts, or drops idle connections, does). Yields (connection
    number, request line) per request.
    """
    seen: list[tuple[int, bytes]] = []
    listener = await anyio.create_unix_listener(path)
    connections = 0

    async def serve(stream: SocketStream) -> None:
        nonlocal connections
        connections += 1
        number = connections
        async with stream:
            data = b""
            answered = 0
            while close_after is None or answered < close_after:
                while b"\r\n\r\n" not in data:
                    try:
                        data += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                head, _, data = data.partition(b"\r\n\r\n")
                seen.append((number, head.split(b"\r\n", 1)[0]))
                body = json.dumps([{"Id": f"c{len(seen)}"}]).encode()
                await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                answered += 1

    async with anyio.create_task_group() as tg, listener:
        tg.start_soon(listener.serve, serve)
        yield seen
        tg.cancel_scope.cancel()


async def test_one_kept_connection_serves_request_after_request(tmp_path: Path) -> None:
    reader = EngineHTTP(str(tmp_path / "e.sock"))
    async with keepalive_engine(tmp_path / "e.sock") as seen:
        answers = [await reader.get_json("1.41", "/containers/json") for _ in range(5)]
    reader.close()
    assert [a[0]["Id"] for a in answers] == ["c1", "c2", "c3", "c4", "c5"]
    assert [number for number, _ in seen] == [1] * 5


async def test_a_kept_connection_the_engine_closed_is_replaced_and_the_request_sent_again(tmp_path: Path) -> None:
    reader = EngineHTTP(str(tmp_path / "e.sock"))
    async with keepalive_engine(tmp_path / "e.sock", close_after=2) as seen:
        answers = [await reader.get_json("1.41", "/containers/json", {"n": str(n)}) for n in range(5)]
    reader.close()
    # Every request was answered once; the ones that met a closed connection went out again on a new one.
    assert len(answers) == 5
    assert [line for _, line in seen] == [b"GET /v1.41/containers/json?n=%d HTTP/1.1" % n for n in range(5)]
    assert [number for number, _ in seen] == [1, 1, 2, 2, 3]


async def test_an_answer_that_says_close_leaves_no_connection_to_reuse(tmp_path: Path) -> None:
    listing: list[dict[str, object]] = [{"Id": "c1", "Labels": {}}]
    async with scripted_engine(tmp_path / "e.sock", version_or_listing(listing)) as requests:
        reader = EngineHTTP(str(tmp_path / "e.sock"))
        for _ in range(3):
            assert await reader.get_json("1.41", "/containers/json") == listing
        reader.close()
    # The scripted engine serves one request per connection and says Connection: close.
    assert len(requests) == 3


async def test_a_request_cancelled_mid_answer_does_not_leave_its_connection_for_the_next(tmp_path: Path) -> None:
    release = anyio.Event()
    body = json.dumps([{"Id": "c1"}]).encode()

    async def answer(stream: SocketStream, request: bytes) -> None:
        # The first request's head comes at once, its body only after the client gave up.
        if not release.is_set():
            await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            await release.wait()
            with suppress(anyio.BrokenResourceError):
                await stream.send(body)
            return
        await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    async with scripted_engine(tmp_path / "e.sock", answer) as requests:
        reader = EngineHTTP(str(tmp_path / "e.sock"))
        with anyio.move_on_after(0.3):
            await reader.get_json("1.41", "/containers/json")
        release.set()
        assert await reader.get_json("1.41", "/containers/json") == [{"Id": "c1"}]
        reader.close()
    assert len(requests) == 2  # a new connection, not the cancelled one with its late answer
