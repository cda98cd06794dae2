"""The engine layer on real remote engines: TLS and SSH, Docker-in-Docker engines on this machine (tests/engines).

Every read over each transport; a paused engine failing fast and coming back by itself; TLS refusals
that say what is wrong; an SSH engine served by kept ``dial-stdio`` sessions, not an ssh per call.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import docker
import pytest

from gateway.engine import ssh as ssh_module
from gateway.engine.client import Engine
from gateway.engine.containers import PROJECT_LABEL, SERVICE_LABEL, container_to_status
from gateway.engine.endpoint import EngineEndpoint
from gateway.errors import EngineUnavailable
from tests.conftest import random_name
from tests.engines import Engine as DindEngine

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.dind]

TRANSPORTS = ["tls", "ssh"]


def endpoint(host: DindEngine, via: str, timeout: float = 10.0) -> EngineEndpoint:
    """The gateway's endpoint for a test engine, as a fleet's config.json entry would give it."""
    if via == "tls":
        return EngineEndpoint(host.tls_host, tls_verify=True, cert_path=host.tls_dir, timeout=timeout)
    return EngineEndpoint(host.ssh_host, timeout=timeout)


@pytest.fixture(params=TRANSPORTS)
def remote(
    request: pytest.FixtureRequest, tls_engine: DindEngine, ssh_engine: DindEngine
) -> Iterator[tuple[Engine, DindEngine]]:
    """(the gateway's Engine for it, the test engine) for each transport."""
    host = tls_engine if request.param == "tls" else ssh_engine
    engine = Engine(endpoint(host, request.param), name=request.param)
    yield engine, host
    engine.close()


@pytest.fixture
def app(remote: tuple[Engine, DindEngine], busybox_image: str) -> Iterator[tuple[str, str]]:
    """A running container of a compose project on the remote engine, made by that engine's own CLI: (project, id)."""
    _, host = remote
    project = random_name("rr")
    labels = ["--label", f"{PROJECT_LABEL}={project}", "--label", f"{SERVICE_LABEL}=app"]
    command = ["sh", "-c", "echo hello from the remote engine; sleep 600"]
    cid = host.docker("run", "-d", "--init", *labels, busybox_image, *command).stdout.strip()
    try:
        yield project, cid
    finally:
        host.docker("rm", "-f", cid, check=False)


async def test_every_read_works_over_the_transport_and_reaches_that_engine_only(
    remote: tuple[Engine, DindEngine], app: tuple[str, str], docker_client: docker.DockerClient
) -> None:
    engine, host = remote
    project, cid = app
    (listed,) = await engine.project_containers_async(project)
    assert listed["Id"] == cid
    row = container_to_status(listed, await engine.started_at_async(listed))
    assert (row.service, row.state) == ("app", "running")
    assert row.started_at == host.docker("inspect", "-f", "{{.State.StartedAt}}", cid).stdout.strip()
    assert (await engine.inspect_async(cid))["Config"]["Labels"][PROJECT_LABEL] == project

    with anyio.fail_after(20):
        while b"hello from the remote engine" not in b"".join(
            [b async for b in engine.log_stream(cid, tail=5, since=None)]
        ):
            await anyio.sleep(0.1)

    async with engine.events({"type": ["container"], "label": [f"{PROJECT_LABEL}={project}"]}) as events:
        await anyio.to_thread.run_sync(lambda: host.docker("kill", cid))
        with anyio.fail_after(20):
            actions = []
            async for event in events:
                actions.append(event.get("Action"))
                if "die" in actions:
                    break
    assert [s.state for s in [container_to_status(c) for c in await engine.project_containers_async(project)]] == [
        "exited"
    ]
    # The engine's containers, not this machine's: the local engine has none of the project.
    assert docker_client.api.containers(all=True, filters={"label": f"{PROJECT_LABEL}={project}"}) == []
    # Every call but the event stream (which held its own) rode one kept connection.
    assert engine.connection.http.opened <= 2


async def test_a_paused_engine_fails_fast_after_its_first_deadline_and_comes_back_by_itself(
    remote: tuple[Engine, DindEngine], app: tuple[str, str]
) -> None:
    _, host = remote
    project, _ = app
    via = "tls" if host.tls else "ssh"
    engine = Engine(endpoint(host, via, timeout=2.0), name="paused")
    try:
        assert len(await engine.project_containers_async(project)) == 1
        assert engine.state.status == "up"
        with host.paused_for():
            # TCP still connects (and a kept connection still takes the request): only the deadline ends it.
            with anyio.fail_after(2.0 + 5), pytest.raises(EngineUnavailable, match="no answer within 2 s"):
                await engine.project_containers_async(project)
            state = engine.state
            assert state.status == "degraded" and "no answer within 2 s" in (state.reason or "")
            for call in (engine.project_containers_async(project), engine.ping_async(), engine.inspect_async("x")):
                # Far inside the deadline: the breaker answers, not the engine.
                with anyio.fail_after(1.0), pytest.raises(EngineUnavailable, match="engine 'paused' degraded since"):
                    await call
        # No reconnect by hand: the next call after the backoff tries the engine again, and it answers.
        with anyio.fail_after(60):
            while True:
                try:
                    if len(await engine.project_containers_async(project)) == 1:
                        break
                except EngineUnavailable:
                    await anyio.sleep(0.2)
        assert engine.state.status == "up"
    finally:
        engine.close()


def _other_ca(folder: Path) -> Path:
    """A folder with a CA of its own (which signed nothing the engine holds) and the engine's client pair."""
    folder.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"]
        + ["-subj", "/CN=another CA", "-keyout", str(folder / "ca-key.pem"), "-out", str(folder / "ca.pem")],
        check=True,
        capture_output=True,
    )
    return folder


async def test_an_engine_certificate_from_another_ca_is_refused_with_what_to_check(
    tls_engine: DindEngine, tmp_path: Path
) -> None:
    folder = _other_ca(tmp_path / "other")
    for name in ("cert.pem", "key.pem"):
        (folder / name).write_bytes((tls_engine.tls_dir / name).read_bytes())
    engine = Engine(EngineEndpoint(tls_engine.tls_host, tls_verify=True, cert_path=folder, timeout=5))
    try:
        refused = "certificate was not accepted: .*signed by the CA in ca.pem"
        with pytest.raises(EngineUnavailable, match=refused) as caught:
            await engine.ping_async()
        assert f"DOCKER_HOST={tls_engine.tls_host}" in str(caught.value)
    finally:
        engine.close()


async def test_a_client_without_a_certificate_is_refused_by_the_engine_and_told_so(
    tls_engine: DindEngine, tmp_path: Path
) -> None:
    folder = tmp_path / "ca-only"
    folder.mkdir()
    (folder / "ca.pem").write_bytes((tls_engine.tls_dir / "ca.pem").read_bytes())
    engine = Engine(EngineEndpoint(tls_engine.tls_host, tls_verify=True, cert_path=folder, timeout=5))
    try:
        with pytest.raises(EngineUnavailable, match="refused this client's certificate"):
            await engine.ping_async()
    finally:
        engine.close()


async def test_plain_http_to_the_tls_port_says_what_the_engine_said(tls_engine: DindEngine) -> None:
    engine = Engine(EngineEndpoint(tls_engine.tls_host, timeout=5))
    try:
        with pytest.raises(EngineUnavailable, match="HTTP request to an HTTPS server"):
            await engine.ping_async()
    finally:
        engine.close()


@pytest.fixture
def ssh_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every ssh this process starts from now on is written down (a logging ``ssh`` first on PATH)."""
    folder = tmp_path / "counting"
    folder.mkdir()
    log = tmp_path / "ssh.log"
    real = "/usr/bin/ssh" if Path("/usr/bin/ssh").exists() else "ssh"
    (folder / "ssh").write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    (folder / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    log.touch()
    return log


def sessions(log: Path) -> int:
    return sum("dial-stdio" in line for line in log.read_text().splitlines())


async def test_an_ssh_engine_is_served_by_kept_sessions_not_an_ssh_per_call(
    ssh_engine: DindEngine, ssh_log: Path, busybox_image: str
) -> None:
    project = random_name("ss")
    cid = ssh_engine.docker("run", "-d", "--label", f"{PROJECT_LABEL}={project}", busybox_image, "sleep", "600")
    engine = Engine(EngineEndpoint(ssh_engine.ssh_host), name="lab")
    try:
        await engine.ping_async()
        assert sessions(ssh_log) == 1
        for _ in range(20):
            (listed,) = await engine.project_containers_async(project)
            await engine.inspect_async(listed["Id"])
            [block async for block in engine.log_stream(listed["Id"], tail=5, since=None)]
        assert sessions(ssh_log) == 1, ssh_log.read_text()

        async def listing() -> None:
            await engine.inspect_async(cid.stdout.strip())

        # Calls at once need channels at once; they are kept for what follows.
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(listing)
        at_once = sessions(ssh_log)
        assert 1 <= at_once <= 3
        for _ in range(20):
            await engine.project_containers_async(project)
        assert sessions(ssh_log) == at_once
    finally:
        engine.close()
        ssh_engine.docker("rm", "-f", cid.stdout.strip(), check=False)


def _logins(host: DindEngine) -> int:
    """SSH logins the engine's sshd accepted so far: each is a handshake, which a multiplexed session skips."""
    done = host.exec("grep", "-c", "Accepted publickey", "/var/log/sshd.log", check=False)
    return int(done.stdout.strip() or 0)


async def test_compose_over_ssh_rides_the_gateways_master_connection(
    ssh_engine: DindEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a machine whose ssh config does not multiplex (the test engine's config does): the gateway does.
    monkeypatch.setattr(ssh_module, "_user_multiplexes", lambda ssh, target: False)
    subprocess.run(
        ["ssh", "-O", "exit", f"root@{ssh_engine.ip}"], capture_output=True, check=False
    )  # the user's master
    engine = Engine(EngineEndpoint(ssh_engine.ssh_host), name="lab")
    try:
        await engine.ping_async()  # the gateway's master connection: one login
        env = engine.cli_environment(os.environ)
        before = _logins(ssh_engine)
        started = time.monotonic()
        for _ in range(2):
            done = await anyio.run_process(["docker", "compose", "ls", "--all"], env=env, check=False)
            assert done.returncode == 0, done.stderr.decode()
        assert _logins(ssh_engine) == before, "Compose opened SSH connections of its own"
        assert time.monotonic() - started < 60
    finally:
        folder = engine.connection.ssh.folder if engine.connection.ssh else None
        engine.close()
    assert folder is not None and not folder.exists()  # the control socket and the CLIs' ssh are gone with it


async def test_an_ssh_login_that_fails_says_what_ssh_said(ssh_engine: DindEngine) -> None:
    engine = Engine(EngineEndpoint(f"ssh://nobody@{ssh_engine.ip}", timeout=10), name="lab")
    try:
        with pytest.raises(EngineUnavailable, match="Permission denied") as caught:
            await engine.ping_async()
        assert f"ssh nobody@{ssh_engine.ip} docker version" in str(caught.value)
    finally:
        engine.close()
