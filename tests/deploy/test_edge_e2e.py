"""A gateway that cannot serve says so on /health, and the watchdog restarts it: the real deployment.

The three containers of ``docker-compose.yml`` (see conftest.py) run on the real engine. The
gateway inside its container is driven, from outside, into a state it cannot serve from: its
descriptor limit is lowered below what it needs (``prlimit --pid``, as an attacker's flood or a
descriptor leak would leave it). Its ``/health`` then answers 503, the image's HEALTHCHECK fails,
the engine marks the container unhealthy, and the watchdog restarts it: a fresh process with its
limits back.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker
import httpx2
import pytest

from tests.polling import eventually

from .conftest import Deployment

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.docker]


def inspect(name: str) -> dict[str, object]:
    client = docker.from_env()
    try:
        return dict(client.api.inspect_container(name))
    finally:
        client.close()


def gateway_pid(container: str) -> int:
    """The host pid of the gateway process in ``container`` (its PID 1 is the init that starts it)."""
    state = inspect(container)["State"]
    assert isinstance(state, dict)
    init = int(state["Pid"])
    children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
    for child in children:
        if b"compose-agent" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise AssertionError(f"no compose-agent process under pid {init} (children: {children})")


def lower_descriptor_limit(pid: int, limit: int) -> None:
    """``prlimit --pid`` as the process's own user: that needs no CAP_SYS_RESOURCE, which test
    machines (containers themselves) may lack."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    uid, gid = status["Uid"].split()[0], status["Gid"].split()[0]
    subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            "prlimit",
            "--pid",
            str(pid),
            f"--nofile={limit}",
        ],
        check=True,
    )


async def get_health(url: str) -> httpx2.Response | None:
    try:
        async with httpx2.AsyncClient(timeout=5.0) as http:
            return await http.get(f"{url}/health")
    except httpx2.HTTPError:
        return None


async def test_a_gateway_whose_health_says_503_is_restarted_by_the_watchdog(deployment: Deployment) -> None:
    gateway = deployment.containers["compose-agent"]
    before = inspect(gateway)["State"]
    assert isinstance(before, dict)
    pid = gateway_pid(gateway)
    open_now = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    # A few descriptors to spare: /health can still answer, and says it cannot serve.
    lower_descriptor_limit(pid, open_now + 6)

    async def says_503() -> httpx2.Response | None:
        answer = await get_health(deployment.gateway_url)
        return answer if answer is not None and answer.status_code == 503 else None

    answer = await eventually(says_503, timeout=30, interval=0.5, what="the gateway's /health saying 503")
    assert answer is not None
    assert any("file descriptors nearly exhausted" in reason for reason in answer.json()["reasons"])

    async def restarted() -> bool:
        state = inspect(gateway)["State"]
        assert isinstance(state, dict)
        if state["StartedAt"] == before["StartedAt"] or not state["Running"]:
            return False
        answer = await get_health(deployment.gateway_url)
        return answer is not None and answer.status_code == 200

    # Three failed probes 2 s apart make it unhealthy; the watchdog looks every second and waits 2 s.
    await eventually(restarted, timeout=120, interval=0.5, what="the watchdog restarting the unhealthy gateway")
    assert inspect(gateway)["RestartCount"] == 0  # the watchdog did it, not the engine
    logs = deployment.logs("watchdog")
    assert f"event=restart target={gateway}" in logs
    # The watchdog quotes the probe, which quotes the gateway's reason.
    assert "healthcheck failing" in logs and "HTTP 503" in logs and "file descriptors nearly exhausted" in logs
