"""Who owns what on the engine: the compose project label of a named resource, and the running projects.

The policy guard refuses a stack that names a resource it did not create (issue 20): another
stack's volume, the gateway's own state volume, a network another project's clients talk on. It
asks here, through two hooks (:attr:`gateway.policy.guard.PolicyGuard.owners` and ``.projects``):

- :meth:`EngineOwners.owner`: the ``com.docker.compose.project`` label of the existing volume,
  network, secret, config or container of that exact name; ``""`` when it has no such label (made
  outside Compose), None when none exists;
- :meth:`EngineOwners.projects`: the compose projects on the engine (by their containers and
  volumes), whose names a stack must not squat.

Blocking (the engine's own async client, through :func:`gateway.engine.blocking.run_blocking`): the
guard calls both from worker threads, and only on a cold judgement, for the names the model uses.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import quote

from .blocking import run_blocking
from .client import Engine
from .containers import PROJECT_LABEL
from .transport import EngineRefused

__all__ = ["EngineOwners", "KINDS"]

KINDS = ("volume", "network", "secret", "config", "container")
# What `docker stack deploy` labels a stack's resources with (gateway.swarm.tasks.NAMESPACE_LABEL:
# the engine package imports no swarm module).
STACK_NAMESPACE_LABEL = "com.docker.stack.namespace"
# A node that is not a swarm manager answers 503 for secrets and configs: it has none.
_NOT_A_MANAGER = 503
# Where the Engine API inspects each kind by name.
_INSPECT = {
    "volume": "/volumes/{}",
    "network": "/networks/{}",
    "secret": "/secrets/{}",
    "config": "/configs/{}",
    "container": "/containers/{}/json",
}
_ABSENT = object()


class EngineOwners:
    """The guard's engine lookups for one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def owner(self, kind: str, name: str) -> str | None:
        """The project label of the existing ``kind`` named exactly ``name``; ``""`` unlabelled, None absent.

        Raises:
            ValueError: an unknown kind.
            EngineUnavailable, GatewayError: the engine cannot be asked (the guard then refuses to judge).
        """
        if kind not in KINDS:
            raise ValueError(f"unknown resource kind {kind!r}; one of {', '.join(KINDS)}")
        found = self._inspect(kind, name)
        if found is None:
            return None
        named, labels = _name_and_labels(kind, found)
        if named != name:
            # The engine also finds networks and containers by an id prefix: that is not this name.
            return None
        # A swarm stack's own networks, secrets and configs carry its namespace instead of a project.
        return str(labels.get(PROJECT_LABEL) or labels.get(STACK_NAMESPACE_LABEL) or "")

    def projects(self) -> set[str]:
        """The compose projects on the engine: of every container (stopped ones too) and every volume.

        Raises:
            EngineUnavailable, GatewayError: the engine cannot be asked.
        """
        # Each call goes straight to the client (never back into this file), and blocks its worker thread.
        containers = run_blocking(self.engine.project_containers_async, None)
        names = {str(c["Labels"][PROJECT_LABEL]) for c in containers}
        query = {"filters": {"label": [PROJECT_LABEL]}}
        listed = run_blocking(functools.partial(self.engine.request, missing=None), "GET", "/volumes", query)
        volumes = (listed or {}).get("Volumes") or []
        names.update(str((v.get("Labels") or {}).get(PROJECT_LABEL)) for v in volumes)
        names.discard("")
        names.discard("None")
        return names

    def _inspect(self, kind: str, name: str) -> dict[str, Any] | None:
        path = _INSPECT[kind].format(quote(name, safe=""))
        try:
            found = run_blocking(functools.partial(self.engine.request, missing=_ABSENT), "GET", path)
        except EngineRefused as exc:
            if kind in ("secret", "config") and exc.status == _NOT_A_MANAGER:
                return None
            raise
        return None if found is _ABSENT or not isinstance(found, dict) else found


def _name_and_labels(kind: str, found: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """An inspected resource's own name and labels, wherever its kind keeps them."""
    if kind == "container":
        return str(found.get("Name") or "").lstrip("/"), (found.get("Config") or {}).get("Labels") or {}
    if kind in ("secret", "config"):
        spec = found.get("Spec") or {}
        return str(spec.get("Name") or ""), spec.get("Labels") or {}
    return str(found.get("Name") or ""), found.get("Labels") or {}
