"""A multi-node Docker swarm of test engines: one manager reachable over TLS, workers joined with the token.

``start_swarm(image)`` starts three engines side by side, makes the first the manager
(``docker swarm init --advertise-addr <its address>``), joins the others as workers and waits until
every node is ``Ready``. Swarm traffic runs between the containers' bridge addresses; nothing is
published on this machine. ``swarm.remove()`` removes the engines, their volumes and files.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from functools import partial

from tests.engines.engine import Engine, Via, in_parallel, start_engine
from tests.engines.errors import EngineError, run

__all__ = ["Node", "Swarm", "start_swarm"]

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0

# Puts the swarm back as a test found it: every node active, no service, no stack's network, config
# or secret. Best effort: a network whose tasks are still going away is tried again at the next reset.
RESET_SCRIPT = r"""
for node in $(docker node ls --format '{{.ID}} {{.Availability}}' | awk '$2 != "Active" {print $1}'); do
  docker node update --availability active "$node" >/dev/null && echo "activated node $node"
done
for service in $(docker service ls -q); do
  docker service rm "$service" >/dev/null && echo "removed service $service"
done
for kind in config secret network; do
  for item in $(docker $kind ls -q --filter label=com.docker.stack.namespace); do
    docker $kind rm "$item" >/dev/null 2>&1 && echo "removed $kind $item"
  done
done
true
"""


@dataclass(frozen=True)
class Node:
    """One node as the manager sees it (``docker node ls``)."""

    id: str
    hostname: str
    status: str
    availability: str
    manager: bool


class Swarm:
    """A running swarm: the manager engine first, then the workers. Node hostnames are the engines' names."""

    def __init__(self, manager: Engine, workers: list[Engine]) -> None:
        self.manager = manager
        self.workers = workers

    def __repr__(self) -> str:
        return f"Swarm(manager={self.manager.name!r}, workers={[w.name for w in self.workers]!r})"

    @property
    def engines(self) -> list[Engine]:
        return [self.manager, *self.workers]

    def docker_env(self, via: Via | None = None) -> dict[str, str]:
        """The client variables that reach the manager (over TLS by default)."""
        return self.manager.docker_env(via)

    def nodes(self) -> list[Node]:
        """Every node of the swarm, as the manager lists it."""
        listing = self.manager.docker("node", "ls", "--format", "{{json .}}").stdout
        return [
            Node(row["ID"], row["Hostname"], row["Status"], row["Availability"], bool(row["ManagerStatus"]))
            for row in map(json.loads, filter(None, listing.splitlines()))
        ]

    def drain(self, engine: Engine) -> None:
        """Drain the engine's node: the scheduler moves its tasks elsewhere and places none there."""
        self.manager.docker("node", "update", "--availability", "drain", engine.name)

    def activate(self, engine: Engine) -> None:
        """Let the scheduler place tasks on the engine's node again."""
        self.manager.docker("node", "update", "--availability", "active", engine.name)

    def load_image(self, tag: str) -> None:
        """Copy a local image into every node, side by side: the swarm has no registry to pull from.

        Raises:
            EngineError: the image is not on this machine, or a node could not load it.
        """
        with tempfile.TemporaryFile() as archive:
            run(["docker", "save", tag], stdout=archive, what=f"docker save {tag}")
            in_parallel([partial(_load, engine, archive.fileno()) for engine in self.engines])

    def reset(self) -> list[str]:
        """Activate every node and remove every service and stack leftover; return what was undone."""
        return self.manager.exec("sh", "-s", input=RESET_SCRIPT, timeout=120).stdout.splitlines()

    def remove(self) -> None:
        """Remove every engine of the swarm (side by side). Nothing needs to leave the swarm first.

        Raises:
            EngineError: an engine could not be removed (the others still were).
        """
        done = in_parallel([partial(_remove, engine) for engine in self.engines])
        errors = [step.error for step in done if step.error is not None]
        if errors:
            raise errors[0]


class _Done:
    """What :func:`in_parallel` returns for a step that makes nothing to remove."""

    def __init__(self, error: EngineError | None = None) -> None:
        self.error = error

    def remove(self) -> None:
        return None


def _load(engine: Engine, fd: int) -> _Done:
    # Each node reads the one archive through its own file description, from the start.
    with open(f"/proc/self/fd/{fd}", "rb") as archive:
        engine.load_archive(archive)
    return _Done()


def _remove(engine: Engine) -> _Done:
    try:
        engine.remove()
    except EngineError as exc:
        return _Done(exc)
    return _Done()


def _wait_ready(manager: Engine, count: int, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    statuses: list[str] = []
    while time.monotonic() < deadline:
        statuses = manager.docker("node", "ls", "--format", "{{.Status}}").stdout.split()
        if len(statuses) == count and all(status == "Ready" for status in statuses):
            return
        time.sleep(0.1)
    raise EngineError(f"the swarm of {manager.name} has not {count} Ready nodes within {timeout:g} s: {statuses}")


def start_swarm(image: str, *, workers: int = 2, ssh: bool = False, network: str | None = None) -> Swarm:
    """Start ``1 + workers`` engines side by side and form a swarm; the manager listens on TLS (and SSH with ``ssh``).

    Raises:
        EngineError: an engine did not start or a node did not join; every engine made is removed first.
    """
    started = time.monotonic()
    engines = in_parallel(
        [partial(start_engine, image, tls=True, ssh=ssh, network=network, prefix="compose-agent-swarm")]
        + [partial(start_engine, image, network=network, prefix="compose-agent-swarm")] * workers
    )
    swarm = Swarm(engines[0], engines[1:])
    try:
        manager = swarm.manager
        manager.docker("swarm", "init", "--advertise-addr", manager.ip)
        token = manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        in_parallel([partial(_join, worker, token, manager.ip) for worker in swarm.workers])
        _wait_ready(manager, 1 + workers)
    except BaseException:
        swarm.remove()
        raise
    logger.info("swarm of %d nodes ready after %.1f s", 1 + workers, time.monotonic() - started)
    return swarm


def _join(worker: Engine, token: str, manager_ip: str) -> _Done:
    # The token goes in on stdin: a failed command's line ends up in the error message.
    join = 'exec docker swarm join --advertise-addr "$1" --token "$(cat)" "$2"'
    worker.exec("sh", "-c", join, "sh", worker.ip, f"{manager_ip}:2377", input=token)
    return _Done()
