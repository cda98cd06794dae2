"""A served gateway on a remote engine, set as in every Docker tool: DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH.

The gateway process reads, and Compose (which it runs with the engine's own variables) writes, on
the TLS or SSH engine; nothing lands on this machine's engine. Over SSH, its reads ride kept
``dial-stdio`` sessions: a ``ps`` starts no ssh.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import docker
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway.engine.containers import PROJECT_LABEL
from tests.conftest import StackFactory
from tests.engines import Engine as DindEngine
from tests.engines import Via
from tests.gateway.conftest import start_gateway, stop_process

pytestmark = [pytest.mark.anyio, pytest.mark.docker, pytest.mark.dind]

# No bind mount: a remote engine resolves host paths on its own host, where the stack folder is not.
TICKING = """
services:
  worker:
    image: {image}
    init: true
    command: ["sh", "-c", "i=0; while true; do i=$$((i+1)); echo tick $$i; sleep 0.2; done"]
"""


async def _call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    text = " ".join(getattr(block, "text", "") for block in result.content)
    assert not result.is_error, f"{tool}: {text}"
    return result.structured_content or {}


def _remove_remote(host: DindEngine, project: str) -> None:
    label = f"label={PROJECT_LABEL}={project}"
    ids = host.docker("ps", "-aq", "--filter", label, check=False).stdout.split()
    if ids:
        host.docker("rm", "-f", *ids, check=False)
    networks = host.docker("network", "ls", "-q", "--filter", label, check=False).stdout.split()
    if networks:
        host.docker("network", "rm", *networks, check=False)


def _counting_ssh(folder: Path) -> Path:
    """A folder whose ``ssh`` writes each command line down and runs the real ssh; returns the log."""
    folder.mkdir()
    log = folder / "ssh.log"
    log.touch()
    (folder / "ssh").write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec /usr/bin/ssh "$@"\n')
    (folder / "ssh").chmod(0o755)
    return log


def _gateway_sessions(log: Path) -> int:
    # The gateway's own sessions say BatchMode; Compose's (the docker CLI's helper) do not.
    return sum("dial-stdio" in line and "BatchMode=yes" in line for line in log.read_text().splitlines())


@pytest.mark.parametrize("via", ["tls", "ssh"])
async def test_a_gateway_on_a_remote_engine_runs_and_reads_its_stacks_there(
    via: Via,
    tls_engine: DindEngine,
    ssh_engine: DindEngine,
    stacks: StackFactory,
    tmp_path: Path,
    docker_client: docker.DockerClient,
) -> None:
    host = tls_engine if via == "tls" else ssh_engine
    project = stacks.make(TICKING)
    log = _counting_ssh(tmp_path / "counting")
    env = {**host.docker_env(via), "PATH": f"{log.parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("DOCKER_CONTEXT", None)
    gateway = start_gateway(tmp_path, stacks.root, env=env)
    try:
        async with httpx2.AsyncClient(headers=gateway.headers(), timeout=120) as http:
            health = (await http.get(f"{gateway.base}/health")).json()
            assert health["engine"] == "up" and health["engine_state"]["status"] == "up"
            async with streamable_http_client(gateway.url, http_client=http) as (read, write, *_):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    assert project in {s["name"] for s in (await _call(session, "list_stacks"))["stacks"]}
                    await _call(session, "up", project=project, wait=True)
                    (row,) = (await _call(session, "ps", project=project))["services"]
                    assert (row["service"], row["state"]) == ("worker", "running")
                    on_host = host.docker("ps", "-q", "--filter", f"label={PROJECT_LABEL}={project}").stdout.split()
                    assert len(on_host) == 1
                    local = docker_client.api.containers(all=True, filters={"label": f"{PROJECT_LABEL}={project}"})
                    assert local == [], "the stack ran on this machine's engine"

                    sessions = _gateway_sessions(log)
                    for _ in range(20):
                        (again,) = (await _call(session, "ps", project=project))["services"]
                        assert again["state"] == "running"
                    if via == "ssh":
                        assert 1 <= sessions == _gateway_sessions(log), log.read_text()

                    logs = await _call(session, "logs", project=project, tail=20, grep="tick")
                    assert logs["text"] and all(" | tick " in line for line in logs["text"].splitlines())
                    await _call(session, "down", project=project)
                    assert (await _call(session, "ps", project=project))["services"][0]["state"] == "missing"
        assert host.docker("ps", "-aq", "--filter", f"label={PROJECT_LABEL}={project}").stdout.split() == []
    finally:
        stop_process(gateway.process)
        _remove_remote(host, project)
