"""A single-node swarm on the shared engine, made for the tests and left afterwards only if they made it.

Several test sessions share one engine. Each holds a shared lock on a file while it uses the swarm
(checking and making it under a second lock, so sessions never wait for each other to finish);
the session that initialised it writes the cluster id into a marker, and whichever session finishes
last leaves the swarm if the marker still names the current cluster. A swarm someone made by hand
has no marker and is never left. Compose stacks are not disturbed by swarm mode.

Import the fixture into a test module: ``from tests.gateway.swarm_fixtures import swarm``.
"""

from __future__ import annotations

import fcntl
import logging
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

__all__ = ["swarm", "held_swarm", "remove_stack", "TWO_REPLICAS"]

logger = logging.getLogger(__name__)

# A swarm stack of two replicas that log a line every 0.2 s and stop at once on SIGTERM.
TWO_REPLICAS = """
x-compose-agent:
  target: swarm
services:
  web:
    image: {image}
    init: true
    command: ["sh", "-c", "i=0; while true; do i=$$((i+1)); echo tick $$i; sleep 0.2; done"]
    environment:
      LITERAL: "$${HOME}"
    deploy:
      replicas: 2
      update_config: {parallelism: 2, monitor: 1s}
"""

_LOCK = Path("/tmp/compose-agent-test-swarm.lock")
_INIT_LOCK = Path("/tmp/compose-agent-test-swarm.init.lock")
_MARKER = Path("/tmp/compose-agent-test-swarm.made")


def _swarm_state(client: Any) -> dict[str, Any]:
    state: dict[str, Any] = client.info().get("Swarm") or {}
    return state


class _Holder:
    """This process's hold on the swarm. Each test package may import the fixture, so pytest can
    make several session instances of it in one run; flock locks of one process conflict with
    each other, so only the first instance locks and the last one releases."""

    users = 0
    cluster = ""
    lock: IO[str] | None = None


def _acquire(client: Any) -> str:
    # One session at a time checks (and makes) the swarm, under the init lock; every session then
    # holds the use lock shared for as long as it uses the swarm, side by side with the others.
    # Leaving takes the use lock exclusively, so no session leaves while another holds it.
    with _INIT_LOCK.open("a+") as init:
        fcntl.flock(init, fcntl.LOCK_EX)
        lock = _LOCK.open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_SH)
            state = _swarm_state(client)
            if state.get("LocalNodeState") == "inactive":
                subprocess.run(
                    ["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], check=True, capture_output=True
                )
                state = _swarm_state(client)
                _MARKER.write_text(state["Cluster"]["ID"])
            if state.get("LocalNodeState") != "active" or not state.get("ControlAvailable"):
                pytest.fail(f"the engine is in a swarm but not as a usable manager: {state.get('LocalNodeState')}")
        except BaseException:
            lock.close()
            raise
    _Holder.lock = lock
    return str(state["Cluster"]["ID"])


def _release(client: Any) -> None:
    lock = _Holder.lock
    assert lock is not None
    try:
        with _INIT_LOCK.open("a+") as init:
            fcntl.flock(init, fcntl.LOCK_EX)  # no session is between its check and its shared hold
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("another test session still uses the swarm; it leaves it when done")
                return
            made = _MARKER.read_text().strip() if _MARKER.exists() else ""
            if made and made == _swarm_state(client).get("Cluster", {}).get("ID"):
                subprocess.run(["docker", "swarm", "leave", "--force"], check=True, capture_output=True)
                # The init made the bridge its tasks' gateways use, and leaving keeps it. Unchecked:
                # a container of someone else's may still be on it.
                subprocess.run(["docker", "network", "rm", "docker_gwbridge"], check=False, capture_output=True)
                _MARKER.unlink()
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        _Holder.lock = None


@contextmanager
def held_swarm(client: Any) -> Iterator[str]:
    """Hold the engine's swarm (made if need be) for as long as the block runs; yields the cluster id."""
    if _Holder.users == 0:
        _Holder.cluster = _acquire(client)
    _Holder.users += 1
    try:
        yield _Holder.cluster
    finally:
        _Holder.users -= 1
        if _Holder.users == 0:
            _release(client)


@pytest.fixture(scope="session")
def swarm(docker_client: Any) -> Iterator[str]:
    """The engine as a swarm manager; yields the cluster id."""
    with held_swarm(docker_client) as cluster:
        yield cluster


def remove_stack(name: str) -> None:
    """Remove whatever a test's swarm stack left (services, networks, secrets, configs, volumes)."""
    import docker

    client = docker.from_env()
    label = {"label": f"com.docker.stack.namespace={name}"}
    try:
        for service in client.services.list(filters=label):
            service.remove()
        for kind in (client.secrets, client.configs):
            for item in kind.list(filters=label):
                item.remove()
        # Task containers go away after their service; networks and volumes only after them.
        for container in client.containers.list(all=True, filters=label):
            container.remove(force=True)
        for network in client.networks.list(filters=label):
            network.remove()
        for volume in client.volumes.list(filters=label):
            volume.remove(force=True)
    finally:
        client.close()
