"""Fixtures shared by every test package: a real Docker engine, busybox images, throwaway stacks.

Everything is named with a random suffix and removed afterwards, so two runs can share one engine.
A missing engine is an error, not a skip: deselect with ``-m 'not docker'`` on purpose instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.engine29_proxy import Engine29Proxy, engine29_proxy

pytest_plugins = ["tests.engines.fixtures"]  # tls_engine, ssh_engine, swarm3, engine_factory: real remote engines

BUSYBOX_IMAGE = "compose-agent-test-busybox:latest"
_BUSYBOX_DOCKERFILE = 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\n'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def random_name(prefix: str = "t") -> str:
    """A compose-project-safe name, unique enough for concurrent runs on one engine."""
    return f"{prefix}{secrets.token_hex(4)}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def docker_client():  # type: ignore[no-untyped-def]
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure here means the same thing
        pytest.fail(f"these tests need a running Docker engine (start dockerd, see .ci/run): {exc}")
    yield client
    client.close()


@pytest.fixture
def proxy() -> Iterator[Engine29Proxy]:
    """A Docker Engine 29 emulated in front of the local engine (see tests/engine29_proxy.py)."""
    with engine29_proxy(os.environ.get("DOCKER_HOST")) as running:
        yield running


@pytest.fixture(scope="session")
def busybox_image(docker_client) -> str:  # type: ignore[no-untyped-def]
    """A tiny image built FROM scratch with the static busybox: no registry needed."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).exists():
        pytest.fail("install busybox-static (apt-get install busybox-static): the test images are built from it")
    with tempfile.TemporaryDirectory() as ctx:
        shutil.copy(busybox, Path(ctx) / "busybox")
        (Path(ctx) / "Dockerfile").write_text(_BUSYBOX_DOCKERFILE)
        subprocess.run(["docker", "build", "-q", "-t", BUSYBOX_IMAGE, ctx], check=True, capture_output=True)
    return BUSYBOX_IMAGE


def _remove_project(project: str) -> None:
    """Remove every container, network and volume of a compose project, whatever state it is in."""
    import docker

    client = docker.from_env()
    try:
        label = f"com.docker.compose.project={project}"
        for container in client.containers.list(all=True, filters={"label": label}):
            container.remove(force=True, v=True)
        for network in client.networks.list(filters={"label": label}):
            network.remove()
        for volume in client.volumes.list(filters={"label": label}):
            volume.remove(force=True)
    finally:
        client.close()


def _remove_late_arrivals(projects: set[str]) -> None:
    """Remove what an engine made for ``projects`` after their tests swept them.

    A test that kills Compose mid-``up`` leaves the engine finishing a network (or container) it was
    asked for: the create completes, and its event arrives, after the test's own sweep listed
    nothing. By the end of the session every such create has completed. One listing of each kind,
    matched by project label, finds them all.
    """
    import docker

    client = docker.from_env()
    try:
        key = "com.docker.compose.project"
        for container in client.api.containers(all=True, filters={"label": key}):
            if container["Labels"].get(key) in projects:
                client.api.remove_container(container["Id"], force=True, v=True)
        for network in client.api.networks(filters={"label": key}):
            if (network.get("Labels") or {}).get(key) in projects:
                client.api.remove_network(network["Id"])
        for volume in client.api.volumes(filters={"label": key}).get("Volumes") or []:
            if (volume.get("Labels") or {}).get(key) in projects:
                client.api.remove_volume(volume["Name"], force=True)
    finally:
        client.close()


@pytest.fixture(scope="session")
def swept_projects() -> Iterator[set[str]]:
    """Every project a test's stacks tracked this session; swept once more when the session ends."""
    projects: set[str] = set()
    yield projects
    if projects:
        _remove_late_arrivals(projects)


class StackFactory:
    """Writes stacks into a temporary stacks dir and tears every project down afterwards."""

    def __init__(self, root: Path, image: str, session: set[str] | None = None) -> None:
        self.root = root
        self.image = image
        self.projects: list[str] = []
        self.session = session if session is not None else set()

    def make(self, compose_yaml: str, name: str | None = None, files: dict[str, str] | None = None) -> str:
        """Create a stack folder; ``{image}`` in the YAML becomes the busybox test image."""
        name = name or random_name("s")
        folder = self.root / name
        folder.mkdir(parents=True)
        (folder / "compose.yaml").write_text(compose_yaml.replace("{image}", self.image))
        for rel, text in (files or {}).items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_text(text)
        self.track(name)
        return name

    def track(self, project: str) -> None:
        self.projects.append(project)
        self.session.add(project)

    def cleanup(self) -> None:
        # Every project is swept even when one fails; the first failure is reported afterwards.
        errors: list[Exception] = []
        for project in self.projects:
            try:
                _remove_project(project)
            except Exception as exc:  # noqa: BLE001 - collected and re-raised below
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def stacks(tmp_path: Path, busybox_image: str, swept_projects: set[str]) -> Iterator[StackFactory]:
    root = tmp_path / "stacks"
    root.mkdir()
    factory = StackFactory(root, busybox_image, swept_projects)
    yield factory
    factory.cleanup()


# The web service of the test stacks: busybox httpd serving ./site, healthy as soon as it answers.
WEB_SERVICE = """
  web:
    image: {image}
    init: true
    command: ["httpd", "-f", "-p", "8080", "-h", "/srv"]
    volumes:
      - ./site:/srv:ro
      - data:/data
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/"]
      interval: 1s
      timeout: 2s
      retries: 5
"""

# A two-service stack that starts in under a second and stops at once on SIGTERM.
WEB_WORKER = (
    "\nservices:"
    + WEB_SERVICE
    + """  worker:
    image: {image}
    init: true
    command: ["sh", "-c", "i=0; while true; do i=$$((i+1)); echo tick $$i; sleep 0.2; done"]
volumes:
  data:
"""
)

STACK_FILES = {"site/index.html": "hello from the test stack\n"}

# Starts at once and never becomes healthy, so `up --wait` waits until it is cancelled.
NEVER_HEALTHY = """
services:
  never-healthy:
    image: {image}
    init: true
    command: ["sleep", "3600"]
    healthcheck:
      test: ["CMD", "false"]
      interval: 1s
      retries: 1000
"""

MakeStack = Callable[..., str]
