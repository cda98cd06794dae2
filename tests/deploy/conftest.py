"""The deployment under test: the project's three images, built here and run on the real engine.

One session brings up one copy of ``docker-compose.yml`` under a throwaway project name, with
random container names, random host ports, a temporary stacks folder under /tmp and generated
tokens, so two runs of this suite can share an engine (and an operator's own deployment, whose
images are rebuilt but whose containers are never touched). Everything but the images is removed
afterwards, on failure too.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import _remove_project, free_port, random_name

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("E2E_BASE_IMAGE", "compose-agent-base:bookworm")
DOCKER_SOCKET = "/var/run/docker.sock"
MAIN_FILES = ("docker-compose.yml",)
LEGACY_FILES = ("docker-compose.yml", "docker-compose.legacy.yml")
# Generous: a cold build downloads the project's dependencies through pip inside the builder.
BUILD_TIMEOUT_S = 600
# What the images are built from: their tag is a hash of it, so two test runs from different trees
# that share one engine never run each other's images, and an unchanged tree reuses its own.
_BUILD_INPUTS = ("gateway", "statuspanel", "watchdog", "scripts/mcpb")
_BUILD_FILES = (
    "Dockerfile.compose-agent",
    "docker-compose.yml",
    "pyproject.toml",
    "constraints.txt",
    "README.md",
    ".dockerignore",
)


def _image_tag() -> str:
    digest = hashlib.sha256()
    paths = [REPO / name for name in _BUILD_FILES]
    for folder in _BUILD_INPUTS:
        paths += sorted(p for p in (REPO / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in paths:
        if path.is_file():
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return "t" + digest.hexdigest()[:16]


IMAGE_TAG = os.environ.get("E2E_IMAGE_TAG") or _image_tag()
UP_TIMEOUT_S = 120


def _base_env() -> dict[str, str]:
    """A clean environment for the Compose CLI: none of the caller's VAULT_*, *_TOKEN or STACKS_DIR leak in."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    for name in ("DOCKER_HOST", "DOCKER_CONFIG"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def _run(argv: Sequence[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        command = " ".join(argv)
        raise AssertionError(
            f"{command} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


@dataclass
class Deployment:
    """One running copy of the deployment: where it listens, its names, and a Compose CLI bound to it."""

    project: str
    settings: dict[str, str]
    env_file: Path
    stacks_dir: Path
    containers: dict[str, str] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.settings['COMPOSE_AGENT_PORT']}"

    @property
    def panel_url(self) -> str:
        return f"http://127.0.0.1:{self.settings['STATUS_PANEL_PORT']}"

    @property
    def compose_agent_token(self) -> str:
        return self.settings["COMPOSE_AGENT_TOKEN"]

    @property
    def status_panel_token(self) -> str:
        return self.settings["STATUS_PANEL_TOKEN"]

    def compose(
        self, *args: str, files: Sequence[str] = MAIN_FILES, timeout: float = UP_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        argv = ["docker", "compose", "-p", self.project, "--env-file", str(self.env_file)]
        for name in files:
            argv += ["-f", str(REPO / name)]
        return _run([*argv, *args], {**_base_env(), **self.settings}, timeout)

    def logs(self, service: str, files: Sequence[str] = MAIN_FILES) -> str:
        proc = subprocess.run(
            ["docker", "logs", self.containers[service]], capture_output=True, text=True, timeout=30, check=False
        )
        return proc.stdout + proc.stderr

    def teardown(self, files: Sequence[str] = MAIN_FILES) -> None:
        try:
            self.compose("down", "--volumes", "--remove-orphans", "--timeout", "3", files=files)
        finally:
            # Whatever state down left (or a failed up never reached), the project's label finds it.
            _remove_project(self.project)


def _make_deployment(stacks_dir: Path, workdir: Path, *, suffix: str = "", tokens: bool = True) -> Deployment:
    project = random_name("e2e") + suffix
    settings = {
        "BASE_IMAGE": BASE_IMAGE,
        "IMAGE_TAG": IMAGE_TAG,
        "COMPOSE_AGENT_CONTAINER": f"{project}-compose-agent",
        "STATUS_PANEL_CONTAINER": f"{project}-statuspanel",
        "WATCHDOG_CONTAINER": f"{project}-watchdog",
        "COMPOSE_AGENT_PORT": str(free_port()),
        "STATUS_PANEL_PORT": str(free_port()),
        "STACKS_DIR": str(stacks_dir),
        "DOCKER_GID": str(os.stat(DOCKER_SOCKET).st_gid),
        "COMPOSE_AGENT_TOKEN": secrets.token_urlsafe(32),
        "STATUS_PANEL_TOKEN": secrets.token_urlsafe(32),
        # Short enough that "the watchdog brings it back" takes seconds, not the production 40.
        "WATCHDOG_CHECK_INTERVAL": "1",
        "WATCHDOG_INITIAL_DELAY": "2",
        "WATCHDOG_BACKOFF_MULTIPLIER": "1.5",
        "WATCHDOG_MAX_RESTART_ATTEMPTS": "5",
        # `up --wait` and the watchdog test wait for the first passing probe.
        "HEALTHCHECK_INTERVAL": "2s",
    }
    if not tokens:
        del settings["COMPOSE_AGENT_TOKEN"], settings["STATUS_PANEL_TOKEN"]
    # Written out as well as passed in the environment: --env-file keeps a developer's own .env out,
    # and the file shows what a failed run used.
    env_file = workdir / f"{project}.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    env_file.chmod(0o600)
    containers = {
        "compose-agent": settings["COMPOSE_AGENT_CONTAINER"],
        "statuspanel": settings["STATUS_PANEL_CONTAINER"],
        "watchdog": settings["WATCHDOG_CONTAINER"],
    }
    return Deployment(project, settings, env_file, stacks_dir, containers)


@pytest.fixture(scope="session")
def deploy_images(docker_client) -> str:  # type: ignore[no-untyped-def]
    """The base image (debootstrap, once per engine) and the three project images, rebuilt from this tree."""
    if shutil.which("docker") is None:
        pytest.fail("the e2e tests need the docker CLI with the compose plugin")
    _run([str(REPO / "scripts" / "build-base-image.sh"), BASE_IMAGE], _base_env(), BUILD_TIMEOUT_S)
    _run(
        ["docker", "compose", "--env-file", os.devnull, "-f", str(REPO / "docker-compose.yml"), "build"],
        {**_base_env(), "BASE_IMAGE": BASE_IMAGE, "IMAGE_TAG": IMAGE_TAG},
        BUILD_TIMEOUT_S,
    )
    return BASE_IMAGE


@pytest.fixture(scope="session")
def e2e_workdir() -> Iterator[Path]:
    """Under /tmp with an absolute path: the stacks folder is bind-mounted at the same path in the containers."""
    path = Path(tempfile.mkdtemp(prefix="compose-agent-e2e-", dir="/tmp"))
    # The gateway runs as an unprivileged user: it must be able to read the stacks.
    path.chmod(0o755)
    (path / "stacks").mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def deployment(deploy_images: str, e2e_workdir: Path) -> Iterator[Deployment]:
    """The three-container deployment, up and healthy (``up --wait``)."""
    dep = _make_deployment(e2e_workdir / "stacks", e2e_workdir)
    try:
        dep.compose("up", "--detach", "--wait", "--wait-timeout", str(UP_TIMEOUT_S), timeout=UP_TIMEOUT_S + 30)
        yield dep
    except BaseException:
        for service in dep.containers:
            print(f"--- logs of {service}\n{dep.logs(service)[-3000:]}")
        raise
    finally:
        dep.teardown()


@pytest.fixture
def tokenless_deployment(deploy_images: str, e2e_workdir: Path) -> Iterator[Deployment]:
    """A copy with no tokens configured at all: the gateway generates them in its state volume."""
    dep = _make_deployment(e2e_workdir / "stacks", e2e_workdir, suffix="notok", tokens=False)
    try:
        dep.compose("up", "--detach", "--wait", "--wait-timeout", str(UP_TIMEOUT_S), timeout=UP_TIMEOUT_S + 30)
        yield dep
    finally:
        dep.teardown()


@pytest.fixture(scope="session")
def legacy_deployment(deploy_images: str, e2e_workdir: Path) -> Iterator[Deployment]:
    """A second copy in legacy mode (its own project): only the panel runs, with the socket."""
    dep = _make_deployment(e2e_workdir / "stacks", e2e_workdir, suffix="legacy")
    try:
        dep.compose(
            "up",
            "--detach",
            "--wait",
            "--wait-timeout",
            str(UP_TIMEOUT_S),
            files=LEGACY_FILES,
            timeout=UP_TIMEOUT_S + 30,
        )
        yield dep
    except BaseException:
        print(f"--- logs of statuspanel\n{dep.logs('statuspanel')[-3000:]}")
        raise
    finally:
        dep.teardown(files=LEGACY_FILES)


WEB_STACK = """
services:
  web:
    image: {image}
    init: true
    command: ["httpd", "-f", "-p", "8080", "-h", "/srv"]
    ports:
      - "127.0.0.1:{port}:8080"
    volumes:
      - ./site:/srv:ro
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/"]
      interval: 1s
      timeout: 2s
      retries: 10
  worker:
    image: {image}
    init: true
    command: ["sh", "-c", "i=0; while true; do i=$$((i+1)); echo tick $$i; sleep 0.2; done"]
"""


@dataclass
class WebStack:
    name: str
    port: int
    page: str
    folder: Path


@pytest.fixture
def web_stack(e2e_workdir: Path, busybox_image: str) -> Iterator[WebStack]:
    """A stack folder whose web service serves ./site through a relative bind mount, on a random port."""
    name = random_name("web")
    port = free_port()
    folder = e2e_workdir / "stacks" / name
    (folder / "site").mkdir(parents=True)
    page = f"served from the bind mount of {name}\n"
    (folder / "site" / "index.html").write_text(page)
    (folder / "compose.yaml").write_text(WEB_STACK.replace("{image}", busybox_image).replace("{port}", str(port)))
    try:
        yield WebStack(name, port, page, folder)
    finally:
        _remove_project(name)
        shutil.rmtree(folder, ignore_errors=True)
