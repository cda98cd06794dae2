"""Stacks and the gateway's swarm backend for ``swarm3`` (a manager over TLS, two workers).

Import the fixture into a test module: ``from tests.gateway.swarm3_fixtures import backend3``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.compose.cli import ComposeCli
from gateway.engine.client import Engine
from gateway.engine.endpoint import EngineEndpoint
from gateway.swarm.backend import SwarmBackend
from gateway.swarm.dockercli import DockerCli
from tests.conftest import StackFactory
from tests.engines import Swarm

__all__ = ["LIMITED", "SPREAD", "backend3", "deploy", "model_of"]

# Four replicas, at most one per node, on three nodes: one task always waits, and says why. Each
# task logs the node it runs on (a Swarm template, filled in per task).
LIMITED = """
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
      replicas: 4
      placement: {max_replicas_per_node: 1}
      update_config: {parallelism: 4, monitor: 1s}
      restart_policy: {delay: 100ms}
"""

# Three replicas with no limit: the scheduler spreads them, one per node, and moves them freely.
SPREAD = """
x-compose-agent:
  target: swarm
services:
  api:
    image: {image}
    init: true
    command: ["sh", "-c", "while true; do echo tick on $$NODE; sleep 0.2; done"]
    environment:
      NODE: "{{.Node.Hostname}}"
    deploy:
      replicas: 3
      update_config: {parallelism: 3, monitor: 1s}
"""


@pytest.fixture
def backend3(swarm3: Swarm) -> Iterator[SwarmBackend]:
    manager = swarm3.manager
    engine = Engine(EngineEndpoint(manager.tls_host, tls_verify=True, cert_path=manager.tls_dir, timeout=30))
    env = {**os.environ, **swarm3.docker_env()}
    yield SwarmBackend(engine, lambda: DockerCli.locate(None, env), converge_timeout=120, poll_interval=0.2, settle=1.0)
    engine.close()


async def deploy(backend: SwarmBackend, stacks: StackFactory, text: str, **kwargs: Any) -> str:
    # Compose's model keeps the `{{.Node.Hostname}}` template as written; Swarm fills it in per task.
    name = stacks.make(text)
    await backend.deploy(name, await model_of(stacks, name), resolve_image="never", **kwargs)
    return name


async def model_of(stacks: StackFactory, name: str) -> dict[str, Any]:
    """Compose's own normalised model of a stack: what the guard judges and Swarm is given."""
    cli = ComposeCli.locate(None, dict(os.environ))
    folder = stacks.root / name
    out = await cli.run(name, ["config", "--format", "json"], compose_file=folder / "compose.yaml", cwd=folder)
    model: dict[str, Any] = json.loads(out.stdout)
    return model
