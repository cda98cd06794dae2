"""The demo the screenshots are taken of: its stacks and images, the engine, the gateway and the panel.

Used by ``scripts/screenshots.py`` (see there). Everything here that creates something on the engine
or starts a process registers its removal on the caller's ``ExitStack`` first.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx2

logger = logging.getLogger("screenshots")

# The tests' swarm protocol (tests/gateway/swarm_fixtures.py): users hold the lock shared; whoever
# made the swarm writes its id in the marker, and the last user leaves a swarm the marker names.
SWARM_LOCK = Path("/tmp/compose-agent-test-swarm.lock")
SWARM_MARKER = Path("/tmp/compose-agent-test-swarm.made")
PREFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}-$")
PERSON, PASSWORD = "alice", secrets.token_urlsafe(12)

# Demo images: the static busybox under names a reader recognises, in the prefix's own namespace.
IMAGES = {"storefront": "2.4.1", "postgres": "16", "redis": "7.2", "wiki": "1.41", "proxy": "3.1", "cadvisor": "0.49"}
STACKS = {
    "shop": """
services:
  storefront:
    image: {storefront}
    init: true
    command: ["httpd", "-f", "-p", "8080", "-h", "/srv"]
    ports: ["127.0.0.1::8080"]
    volumes: ["./site:/srv:ro"]
    healthcheck: {test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/"], interval: 1s, retries: 10}
  worker:
    image: {storefront}
    init: true
    command: ["sh", "-c", "n=1040; while true; do n=$$((n+1)); echo \\"order $$n paid, receipt sent\\"; sleep 1; done"]
  db:
    image: {postgres}
    init: true
    command: ["sh", "-c", "echo 'ready: 3 tables'; touch /var/lib/db/up; while sleep 3; do echo 'checkpoint'; done"]
    volumes: ["db-data:/var/lib/db"]
    healthcheck: {test: ["CMD", "test", "-f", "/var/lib/db/up"], interval: 1s, retries: 10}
  cache:
    image: {redis}
    init: true
    command: ["sh", "-c", "echo 'listening on 6379'; while sleep 2; do echo \\"$$RANDOM keys, 0 evicted\\"; done"]
volumes:
  db-data:
""",
    "wiki": """
services:
  app:
    image: {wiki}
    init: true
    command: ["httpd", "-f", "-p", "3000", "-h", "/srv"]
    volumes: ["pages:/srv"]
  backup:
    image: {wiki}
    command: ["sh", "-c", "echo 'backup: 42 pages archived'"]
    volumes: ["pages:/srv:ro"]
volumes:
  pages:
""",
    "monitoring": """
services:
  cadvisor:
    image: {cadvisor}
    privileged: true
    volumes: ["/var/run/docker.sock:/var/run/docker.sock:ro", "/:/rootfs:ro"]
""",
    "edge": """
x-compose-agent:
  target: swarm
services:
  proxy:
    image: {proxy}
    init: true
    command: ["sh", "-c", "echo 'routing shop.example.com'; while sleep 5; do echo 'routes reloaded'; done"]
    deploy:
      replicas: 2
""",
}
SITE = {"shop": {"site/index.html": "<h1>The demo shop</h1>\n"}}


class ShotsFailed(Exception):
    """The demo could not be set up or shot; the message says what to do."""


@dataclass
class Options:
    out: Path
    prefix: str = "demo-"
    width: int = 1280
    height: int = 800
    optimise: bool = True

    def name(self, stack: str) -> str:
        return f"{self.prefix}{stack}"

    def image(self, role: str) -> str:
        return f"{self.prefix.rstrip('-')}/{role}:{IMAGES[role]}"


@dataclass
class Service:
    """A child process with its output in a log file, stopped when the demo ends."""

    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    base: str
    process: subprocess.Popen[bytes] | None = None

    def spawn(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 60) -> None:
        """Wait until it answers ``/health``.

        Raises:
            ShotsFailed: it exited, or did not answer in time; the message has its last lines of output.
        """
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ShotsFailed(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx2.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.1)
        raise ShotsFailed(f"{self.name} did not answer /health within {timeout:g} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:]) if self.log.exists() else ""


@dataclass
class Demo:
    """What the shots need: the two processes, the tokens, and whether the swarm stack is there."""

    options: Options
    gateway: Service
    panel: Service
    agent_token: str
    swarm: bool
    stacks: Path
    approval: str = ""
    taken: list[Path] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """The caller's environment less anything that configures the gateway or the panel, plus ``extra``."""
    ours = ("COMPOSE_AGENT_", "STATUS_PANEL_", "VAULT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env = {k: v for k, v in env.items() if k not in ("CONFIG_PATH", "CONTROL_PLANE", "WATCHDOG_URL")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's Compose CLI
    return {**env, **extra}


# --- the engine: images, stacks, the swarm, and removing them ------------------------------------------


def check_free(engine: Any, options: Options) -> None:
    """Refuse to touch projects, stacks or images that are already on the engine under the demo's names.

    Raises:
        ShotsFailed: one is there (an earlier run killed with SIGKILL leaves them; the message says what to do).
    """
    names = {options.name(stack) for stack in STACKS}
    for label in ("com.docker.compose.project", "com.docker.stack.namespace"):
        for container in engine.containers.list(all=True, filters={"label": label}):
            if container.labels.get(label) in names:
                raise ShotsFailed(
                    f"'{container.labels[label]}' already runs on this engine: pass another --prefix, or remove "
                    f"it if an earlier run left it (docker compose -p {container.labels[label]} down -v)"
                )
    taken = [tag for tag in map(options.image, IMAGES) if engine.images.list(name=tag)]
    if taken:
        raise ShotsFailed(
            f"the image {taken[0]} already exists on this engine: pass another --prefix, or remove it if an "
            f"earlier run left it (docker image rm {' '.join(taken)})"
        )


def build_images(options: Options, cleanup: ExitStack) -> None:
    """Every demo image: one FROM scratch with the static busybox, tagged once per role.

    Raises:
        ShotsFailed: busybox is missing, or the build failed.
    """
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).is_file():
        raise ShotsFailed("busybox is missing: apt-get install busybox-static (the demo images are built from it)")
    tags = [options.image(role) for role in IMAGES]
    cleanup.callback(remove_images, tags)
    with tempfile.TemporaryDirectory() as context:
        shutil.copy(busybox, Path(context) / "busybox")
        (Path(context) / "Dockerfile").write_text(
            'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\n'
        )
        args = [arg for tag in tags for arg in ("-t", tag)]
        built = subprocess.run(["docker", "build", "-q", *args, context], capture_output=True, text=True)
    if built.returncode != 0:
        raise ShotsFailed(f"docker build of the demo image failed: {built.stderr.strip()}")


def remove_images(tags: list[str]) -> None:
    for tag in tags:
        removed = subprocess.run(["docker", "image", "rm", tag], capture_output=True, text=True)
        if removed.returncode != 0 and "No such image" not in removed.stderr:
            logger.warning("could not remove the image %s: %s", tag, removed.stderr.strip())


def remove_project(engine: Any, project: str) -> None:
    """Every container, network and volume of a compose project or swarm stack, whatever its state.

    Swarm removes a service's tasks and networks on its own time, so this goes round until nothing is left.

    Raises:
        ShotsFailed: something of the project is still there after 60 s; the message names it.
    """
    deadline = time.monotonic() + 60
    while True:
        left: list[str] = []
        for label in (f"com.docker.compose.project={project}", f"com.docker.stack.namespace={project}"):
            filters = {"label": label}
            services = engine.services.list(filters=filters) if is_manager(engine) else []
            for kind, items in (
                ("service", services),
                ("container", engine.containers.list(all=True, filters=filters)),
                ("network", engine.networks.list(filters=filters)),
                ("volume", engine.volumes.list(filters=filters)),
            ):
                for item in items:
                    try:
                        item.remove(**({"force": True, "v": True} if kind == "container" else {}))
                    except docker.errors.NotFound:
                        pass
                    except docker.errors.APIError as exc:
                        if "not found" not in str(exc.explanation):  # a swarm network may go as we remove it
                            left.append(f"{kind} {item.name}: {exc.explanation}")
        if not left:
            return
        if time.monotonic() > deadline:
            raise ShotsFailed(f"could not remove all of {project}: {'; '.join(left)}")
        time.sleep(0.5)


def is_manager(engine: Any) -> bool:
    return bool((engine.info().get("Swarm") or {}).get("ControlAvailable"))


@contextmanager
def borrowed_swarm(engine: Any) -> Iterator[bool]:
    """The engine as a swarm manager for as long as the block runs: yields False when it cannot be one.

    Follows the tests' protocol, so that neither leaves a swarm the other still uses: a swarm made
    here is marked, and left by whoever uses it last; one made by hand has no marker and is kept.
    """
    lock = SWARM_LOCK.open("a+")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False  # a test session holds it, so it is a swarm already, and stays one while we hold it too
        state = engine.info().get("Swarm") or {}
        if alone and state.get("LocalNodeState") == "inactive":
            made = subprocess.run(
                ["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], capture_output=True, text=True
            )
            if made.returncode != 0:
                logger.warning("skipping the swarm stack: docker swarm init failed: %s", made.stderr.strip())
                yield False
                return
            state = engine.info().get("Swarm") or {}
            SWARM_MARKER.write_text(state["Cluster"]["ID"])
            logger.info("made a single-node swarm for the demo; it is left at the end")
        if state.get("LocalNodeState") != "active" or not state.get("ControlAvailable"):
            logger.warning(
                "skipping the swarm stack: the engine is not a swarm manager (%s)", state.get("LocalNodeState")
            )
            yield False
            return
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield True
    finally:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            made_id = SWARM_MARKER.read_text().strip() if SWARM_MARKER.exists() else ""
            if made_id and made_id == (engine.info().get("Swarm") or {}).get("Cluster", {}).get("ID"):
                subprocess.run(["docker", "swarm", "leave", "--force"], check=True, capture_output=True)
                SWARM_MARKER.unlink()
                logger.info("left the swarm made for the demo")
        except BlockingIOError:
            logger.info("a test session still uses the swarm; it leaves it when done")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()


# --- the gateway, the person, the panel ----------------------------------------------------------------


def write_stacks(options: Options, root: Path, with_swarm: bool) -> None:
    for stack, compose in STACKS.items():
        if stack == "edge" and not with_swarm:
            continue
        folder = root / options.name(stack)
        folder.mkdir(parents=True)
        for role in IMAGES:  # not str.format: the YAML has flow mappings in braces of its own
            compose = compose.replace("{" + role + "}", options.image(role))
        (folder / "compose.yaml").write_text(compose.lstrip())
        for relative, text in SITE.get(stack, {}).items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_text(text)


def start_services(options: Options, work: Path, cleanup: ExitStack, swarm: bool) -> Demo:
    """The gateway with the operator's policy and one person, and the panel that person logs in to."""
    state, gateway_port, panel_port = work / "state", free_port(), free_port()
    agent_token, panel_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    config = work / "config.json"
    config.write_text(json.dumps({"policy": {"approve": ["down"]}, "panel_url": f"http://127.0.0.1:{panel_port}"}))
    env = child_env(
        COMPOSE_AGENT_TOKEN=agent_token,
        STATUS_PANEL_TOKEN=panel_token,
        COMPOSE_AGENT_STATE_DIR=str(state),
        CONFIG_PATH=str(config),
    )
    args = [sys.executable, "-m", "gateway", "serve", "--port", str(gateway_port), "--stacks-dir", str(work / "stacks")]
    gateway = Service("the gateway", args, env, work / "gateway.log", f"http://127.0.0.1:{gateway_port}")
    cleanup.callback(gateway.stop)
    gateway.spawn()
    gateway.wait_healthy()
    panel_env = child_env(
        COMPOSE_AGENT_URL=f"{gateway.base}/mcp",
        STATUS_PANEL_TOKEN=panel_token,
        COMPOSE_AGENT_STATE_DIR=str(state / "panel"),
        CONFIG_PATH=str(work / "no-config.json"),
    )
    args = [sys.executable, "-m", "statuspanel", "serve", "--port", str(panel_port)]
    panel = Service("the status panel", args, panel_env, work / "panel.log", f"http://127.0.0.1:{panel_port}")
    cleanup.callback(panel.stop)
    panel.spawn()  # it starts while the person is added: it follows the people file the gateway shares
    added = subprocess.run(
        [sys.executable, "-m", "gateway", "users", "add", PERSON, "--password-stdin"]
        + ["--grant", "compose:write", "--grant", "compose:approve"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=env,
    )
    if added.returncode != 0:
        raise ShotsFailed(f"compose-agent users add {PERSON} failed: {added.stderr.strip()}")
    shared = state / "panel" / "people.json"
    deadline = time.monotonic() + 30
    while not (shared.exists() and PERSON in shared.read_text()):
        if time.monotonic() > deadline:
            raise ShotsFailed(f"the gateway did not share its people with the panel at {shared}")
        time.sleep(0.1)
    panel.wait_healthy()
    return Demo(options, gateway, panel, agent_token, swarm, work / "stacks")
