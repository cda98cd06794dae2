"""The gateway, run from its own image, on a three-node swarm: deploy, inspect, roll, plan and remove a stack.

The ``compose-agent`` image built from this tree (``Dockerfile.compose-agent``) runs as its
unprivileged user on a Docker network beside a fresh three-node swarm, and reaches the manager
over TLS only: ``DOCKER_HOST=tcp://<manager>:2376``, ``DOCKER_TLS_VERIFY=1`` and the client
certificate mounted read-only, no Docker socket. An MCP client drives it over Streamable HTTP.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import free_port, random_name
from tests.engines import Swarm
from tests.engines.fixtures import EngineFactory
from tests.polling import eventually

from .conftest import IMAGE_TAG

pytestmark = [pytest.mark.anyio, pytest.mark.e2e, pytest.mark.docker, pytest.mark.dind]

APP_UID = 10001  # the image's unprivileged user (Dockerfile.compose-agent)

STACK = """
x-compose-agent:
  target: swarm
services:
  web:
    image: {image}
    init: true
    command: ["sh", "-c", "while true; do echo tick on $$NODE; sleep 0.2; done"]
    environment:
      NODE: "{{.Node.Hostname}}"
    deploy:
      replicas: 3
      placement: {max_replicas_per_node: 1}
      update_config: {parallelism: 3, monitor: 1s}
"""


@dataclass
class SwarmGateway:
    """The containerised gateway and the swarm it manages."""

    url: str
    token: str
    container: str
    swarm: Swarm
    stacks_dir: Path


def _owned(path: Path, mode: int) -> None:
    # The gateway runs as uid 10001: it reads the certificates and writes version history in the stacks folder.
    os.chown(path, APP_UID, APP_UID)
    path.chmod(mode)


@pytest.fixture
def swarm_gateway(
    deploy_images: str, engine_factory: EngineFactory, busybox_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SwarmGateway]:
    network = engine_factory.network()
    swarm = engine_factory.swarm(network=network, busybox=True)
    # Bind-mounted: under /tmp with an absolute path, as the engine on this machine sees it.
    root = tmp_path_factory.mktemp("e2e-swarm", numbered=True)
    root.chmod(0o755)
    certs, stacks_dir = root / "certs", root / "stacks"
    certs.mkdir()
    stacks_dir.mkdir()
    for name in ("ca.pem", "cert.pem", "key.pem"):
        shutil.copy(swarm.manager.tls_dir / name, certs / name)
        _owned(certs / name, 0o600 if name == "key.pem" else 0o644)
    _owned(certs, 0o755)
    _owned(stacks_dir, 0o755)
    container, token, port = random_name("e2e-swarm-gw"), secrets.token_urlsafe(32), free_port()
    subprocess.run(
        [
            "docker",
            "run",
            "--detach",
            "--init",
            "--name",
            container,
            "--network",
            network,
            "--publish",
            f"127.0.0.1:{port}:8765",
            "--volume",
            f"{certs}:/certs:ro",
            "--volume",
            f"{stacks_dir}:/stacks",
            "--env",
            f"DOCKER_HOST=tcp://{swarm.manager.name}:2376",
            "--env",
            "DOCKER_TLS_VERIFY=1",
            "--env",
            "DOCKER_CERT_PATH=/certs",
            "--env",
            f"COMPOSE_AGENT_TOKEN={token}",
            "--env",
            "COMPOSE_AGENT_ALLOWED_HOSTS=127.0.0.1:*,localhost:*",
            f"compose-agent:{IMAGE_TAG}",
            "serve",
            "--transport",
            "http",
            "--host",
            "0.0.0.0",
            "--port",
            "8765",
            "--stacks-dir",
            "/stacks",
        ],  # fmt: skip
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        yield SwarmGateway(f"http://127.0.0.1:{port}", token, container, swarm, stacks_dir)
    except BaseException:
        logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True, check=False)
        print(f"--- logs of the gateway\n{(logs.stdout + logs.stderr)[-4000:]}")
        raise
    finally:
        subprocess.run(["docker", "rm", "--force", "--volumes", container], capture_output=True, check=False)


@asynccontextmanager
async def mcp_client(gw: SwarmGateway) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {gw.token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(180.0)) as http:
        async with Client(streamable_http_client(f"{gw.url}/mcp", http_client=http)) as client:
            yield client


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(tool, arguments)
    text = " ".join(getattr(block, "text", "") for block in result.content)
    assert not result.is_error, f"{tool}({arguments}) failed: {text}"
    return result.structured_content


async def test_the_containerised_gateway_deploys_rolls_and_removes_a_stack_on_a_three_node_swarm_over_tls(
    swarm_gateway: SwarmGateway, busybox_image: str
) -> None:
    gw, swarm = swarm_gateway, swarm_gateway.swarm
    hostnames = {engine.name for engine in swarm.engines}
    name = random_name("e2esw")
    folder = gw.stacks_dir / name
    folder.mkdir()
    (folder / "compose.yaml").write_text(STACK.replace("{image}", busybox_image))
    _owned(folder, 0o755)

    async def healthy() -> bool:
        try:
            async with httpx2.AsyncClient(timeout=5.0) as http:
                return (await http.get(f"{gw.url}/health")).status_code == 200
        except httpx2.HTTPError:
            return False

    await eventually(healthy, timeout=60, interval=0.5, what="the gateway's /health")
    async with mcp_client(gw) as client:
        plan = await call(client, "plan", project=name)
        assert [(a["service"], a["action"]) for a in plan["actions"]] == [("web", "create")]
        assert "Swarm creates it with 3 tasks" in plan["actions"][0]["reason"]

        up = await call(client, "up", project=name, wait=True)
        assert up["message"].endswith("(Docker Swarm)") and "running: web 3/3" in up["events"]
        ps = await call(client, "ps", project=name)
        assert {t["node"] for t in ps["services"] if t["state"] == "running"} == hostnames
        assert {n["hostname"]: n["tasks"] for n in ps["nodes"]} == dict.fromkeys(hostnames, 1)
        before = {t["container"] for t in ps["services"]}

        restarted = await call(client, "restart", project=name)
        assert "web: rolling restart" in restarted["events"]
        after = (await call(client, "ps", project=name))["services"]
        running = [t for t in after if t["state"] == "running" and t["desired_state"] == "running"]
        assert len(running) == 3 and before.isdisjoint({t["container"] for t in running})

        async def every_node_logged() -> bool:
            text = (await call(client, "logs", project=name, tail=5))["text"]
            return all(f"tick on {host}" in text for host in hostnames)

        await eventually(every_node_logged, timeout=60, interval=0.5, what="a log line from every node")
        unchanged = await call(client, "plan", project=name)
        assert [(a["service"], a["action"]) for a in unchanged["actions"]] == [("web", "unchanged")]

        down = await call(client, "down", project=name)
        assert f"Removing service {name}_web" in down["events"]

    label = f"label=com.docker.stack.namespace={name}"
    assert swarm.manager.docker("service", "ls", "-q", "--filter", label).stdout.strip() == ""
    for engine in swarm.engines:
        assert engine.docker("ps", "-aq", "--filter", label).stdout.strip() == "", engine.name
        assert engine.docker("network", "ls", "-q", "--filter", label).stdout.strip() == "", engine.name
    # All of it as the image's unprivileged user, with no Docker socket: TLS to the manager was the only way.
    gateway = subprocess.run(
        ["docker", "inspect", "--format", "{{.Config.User}} {{range .Mounts}}{{.Destination}} {{end}}", gw.container],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert gateway[0] == "app" and "/var/run/docker.sock" not in gateway
