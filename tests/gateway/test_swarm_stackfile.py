"""The swarm opt-in block and the stack file: Compose's real model in, the real docker CLI's loader as judge.

``docker stack config`` loads and validates a stack file the way ``docker stack deploy`` does,
without an engine. Docker CLIs before 23 (Debian 12 ships 20.10) lack it: there the loader is
judged by a real ``docker stack deploy`` on the test swarm, and the services it made are read back.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gateway.compose.cli import ComposeCli
from gateway.errors import InvalidInput
from gateway.swarm.stackfile import DEFAULT_RESOLVE_IMAGE, StackTarget, stack_target, to_stack_file
from tests.conftest import random_name
from tests.gateway.swarm_fixtures import remove_stack, swarm  # noqa: F401 - the fallback asks for the fixture

pytestmark = pytest.mark.anyio

RICH = """
x-compose-agent:
  target: swarm
services:
  web:
    image: busybox
    command: ["sh", "-c", "echo $$HOME"]
    ports: ["18080:8080"]
    depends_on: [worker]
    pull_policy: never
    cpus: 0.5
    mem_limit: 64m
    entrypoint: null
    networks: [front]
    environment:
      LITERAL: "$${NOT_INTERPOLATED}"
    deploy:
      resources:
        reservations: {cpus: 0.25}
  worker:
    image: busybox
    scale: 3
networks:
  front: {}
"""


async def compose_model(tmp_path: Path, text: str) -> dict[str, Any]:
    folder = tmp_path / "stack"
    folder.mkdir()
    (folder / "compose.yaml").write_text(text)
    cli = ComposeCli.locate(None, dict(os.environ))
    out = await cli.run("stack", ["config", "--format", "json"], compose_file=folder / "compose.yaml", cwd=folder)
    model: dict[str, Any] = json.loads(out.stdout)
    return model


def _has_stack_config() -> bool:
    usage = subprocess.run(["docker", "stack", "--help"], capture_output=True, text=True, check=False).stdout
    return any(line.split()[:1] == ["config"] for line in usage.splitlines())


def docker_stack_config(document: dict[str, Any], request: pytest.FixtureRequest) -> subprocess.CompletedProcess[str]:
    """Load ``document`` with the docker CLI's stack loader; stdout shows what it made of it."""
    text = json.dumps(document)
    if _has_stack_config():
        return subprocess.run(
            ["docker", "stack", "config", "--compose-file", "-"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
        )
    request.getfixturevalue("swarm")
    name = random_name("sf")
    try:
        deployed = subprocess.run(
            ["docker", "stack", "deploy", "--compose-file", "-", "--resolve-image", "never", name],
            input=text,
            capture_output=True,
            text=True,
            check=False,
        )
        if deployed.returncode != 0:
            return deployed
        ids = subprocess.run(
            ["docker", "service", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={name}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        specs = subprocess.run(["docker", "service", "inspect", *ids], capture_output=True, text=True, check=True)
        return subprocess.CompletedProcess(deployed.args, 0, specs.stdout, deployed.stderr)
    finally:
        remove_stack(name)


def test_a_stack_without_the_block_runs_on_compose() -> None:
    assert stack_target({"services": {}}) == StackTarget("compose", DEFAULT_RESOLVE_IMAGE)


def test_the_block_asks_for_swarm_and_may_choose_how_images_resolve() -> None:
    assert stack_target({"x-compose-agent": {"target": "swarm"}}).target == "swarm"
    assert stack_target({"x-compose-agent": {"target": "swarm", "resolve_image": "always"}}).resolve_image == "always"


@pytest.mark.parametrize(
    ("block", "named"),
    [
        ("swarm", "must be a mapping"),
        ({"target": "kubernetes"}, "'kubernetes'"),
        ({"target": "swarm", "replicas": 3}, "unknown key(s) replicas"),
        ({"target": "swarm", "resolve_image": "sometimes"}, "'sometimes'"),
    ],
)
def test_a_malformed_block_is_refused_with_how_to_write_it(block: object, named: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        stack_target({"x-compose-agent": block})
    assert named in str(caught.value) and "target: swarm" in str(caught.value)


async def test_compose_model_becomes_a_stack_file_the_docker_cli_accepts(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    model = await compose_model(tmp_path, RICH)
    # The raw model is what the docker CLI's older format refuses; this is why it is rewritten.
    assert docker_stack_config({k: v for k, v in model.items()}, request).returncode != 0

    stack_file = to_stack_file(model)
    loaded = docker_stack_config(stack_file.document, request)
    assert loaded.returncode == 0, loaded.stderr
    web, worker = stack_file.document["services"]["web"], stack_file.document["services"]["worker"]
    assert worker["deploy"]["replicas"] == 3 and "scale" not in worker
    assert web["deploy"]["resources"]["limits"] == {"cpus": "0.5", "memory": "67108864"}
    assert web["deploy"]["resources"]["reservations"]["cpus"] == "0.25"
    assert web["ports"][0]["published"] == 18080
    assert "front" in web["networks"]
    # Compose keeps dollars escaped, so the CLI's own interpolation gives back the literal text.
    assert re.search(r"LITERAL[:=] ?\$\{NOT_INTERPOLATED\}", loaded.stdout), loaded.stdout
    assert "echo $HOME" in loaded.stdout
    assert any("depends_on" in note and "web" in note for note in stack_file.notes)
    assert any("pull_policy" in note for note in stack_file.notes)


async def test_deploying_some_services_keeps_only_those(tmp_path: Path) -> None:
    model = await compose_model(tmp_path, RICH)
    assert set(to_stack_file(model, ["worker"]).document["services"]) == {"worker"}
    with pytest.raises(InvalidInput, match="no service.s. nope in this stack; its services: web, worker"):
        to_stack_file(model, ["nope"])


async def test_a_port_published_on_one_address_is_refused_because_swarm_would_widen_it(tmp_path: Path) -> None:
    model = await compose_model(tmp_path, "services:\n  web:\n    image: busybox\n    ports: ['127.0.0.1:18080:80']\n")
    with pytest.raises(InvalidInput, match="publishes port 80 on 127.0.0.1 only; Swarm publishes every port"):
        to_stack_file(model)


async def test_a_published_port_range_is_refused_with_what_to_do(tmp_path: Path) -> None:
    model = await compose_model(tmp_path, "services:\n  web:\n    image: busybox\n    ports: ['8000-8002:80']\n")
    with pytest.raises(InvalidInput, match="list each port on its own"):
        to_stack_file(model)
