"""The stacks the gateway knows: folders under the stacks dir, and running folder-less projects.

The catalog answers "which stack is this name?", lists every stack, and knows which services a
stack's compose model defines (from Compose itself, cached by the files' mtimes), and where it
runs: Compose, or Docker Swarm for a stack whose compose file opts in (see :mod:`gateway.swarm.backend`).
It holds the policy guard, so that no Compose run it starts reads a file outside the stack's folder.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anyio import to_thread

from .compose.locate import ComposeLocator
from .engine.client import Engine
from .engine.containers import PROJECT_LABEL
from .errors import GatewayError, InvalidInput, StackNotFound
from .folders import read_regular
from .policy.guard import PolicyGuard, refusal
from .policy.rules import Policy, verdict
from .stacks import Stack, discover_stacks, find_stack, validate_project_name
from .swarm.backend import SwarmBackend
from .swarm.dockercli import DockerCli
from .swarm.stackfile import TARGET_KEY, StackTarget, stack_target

__all__ = ["StackCatalog", "files_signature"]

logger = logging.getLogger(__name__)

# How long a stack's defined services are trusted without re-checking its files' mtimes.
_DEFINED_TTL_S = 30.0
# Past this, a file is not searched for the target block: Compose's model decides.
_MENTION_BYTES = 4 * 1024 * 1024
# The files whose change can change a stack's compose model.
_MODEL_FILES = (
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
    ".env",
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yml",
    "docker-compose.override.yaml",
)


@dataclass
class _Defined:
    signature: tuple[tuple[str, float, int], ...]
    checked: float
    services: list[str]
    target: StackTarget


class StackCatalog:
    """Finds stacks by name and reads their compose models."""

    def __init__(
        self,
        stacks_dir: Path,
        engine: Engine,
        compose: ComposeLocator,
        guard: PolicyGuard | None = None,
        swarm: SwarmBackend | None = None,
    ) -> None:
        # Absolute, because the Compose CLI runs with the stack's folder as its working directory.
        self.stacks_dir = stacks_dir.resolve()
        self.engine = engine
        self.compose = compose
        self.guard = guard or PolicyGuard(Policy())
        # The docker CLI gets the Compose CLI's environment: the same variables, the same exclusions.
        self.swarm = swarm or SwarmBackend(engine, lambda: DockerCli.locate(None, compose.located().env))
        self._defined: dict[str, _Defined] = {}
        # name -> (checked, files' signature, whether they mention the target block): see _mentions.
        self._mentions: dict[str, tuple[float, tuple[tuple[str, float, int], ...], bool]] = {}

    def folders(self) -> dict[str, Stack]:
        """Every stack folder under the stacks dir, by name."""
        return discover_stacks(self.stacks_dir)

    def folder(self, project: str) -> Stack | None:
        """The stack folder named ``project`` (already validated), or None."""
        return find_stack(self.stacks_dir, project)

    async def resolve(self, project: str, *, need_folder: bool = False) -> Stack:
        """The stack named ``project``: a folder, or (when allowed) a running external project.

        Raises:
            InvalidInput: a bad name, or an external stack where a folder is needed.
            StackNotFound: naming the known stacks.
        """
        validate_project_name(project)
        stack = self.folder(project)
        if stack is not None:
            return stack
        containers = await to_thread.run_sync(self.engine.project_containers, project)
        if containers or await self.swarm_has(project):
            if need_folder:
                raise InvalidInput(
                    f"stack '{project}' is external (it runs, but has no folder under the stacks dir); "
                    f"this needs its compose file: add a folder '{project}' with a compose.yaml"
                )
            return Stack(project)
        await self.not_found(project)
        raise AssertionError("unreachable")  # pragma: no cover

    async def swarm_has(self, project: str) -> bool:
        """Whether the swarm runs a stack called ``project`` (False where the engine is no manager)."""
        has: bool = await to_thread.run_sync(self.swarm.has_stack, project)
        return has

    async def not_found(self, project: str) -> None:
        """Raise StackNotFound for ``project``, naming the stacks that do exist.

        Raises:
            StackNotFound: always.
        """
        names = set(self.folders())
        try:
            containers = await to_thread.run_sync(self.engine.project_containers, None)
        except GatewayError:
            containers = []
        names.update(c["Labels"][PROJECT_LABEL] for c in containers)
        try:
            names.update(await to_thread.run_sync(self.swarm.stacks))
        except GatewayError:
            pass
        listing = ", ".join(sorted(names)) or "none"
        raise StackNotFound(f"stack '{project}' not found; known stacks: {listing}")

    async def config_model(self, stack: Stack) -> dict[str, Any]:
        """The stack's compose model as Compose validates and normalises it.

        Compose runs only once the stack's file references are inside its folder (or allowed): it
        would read them while loading, and its errors would quote them.

        Raises:
            PolicyRefused: a file reference outside the folder.
            ComposeFailed: Compose could not load the model (its own error message).
        """
        outside = await self.guard.references_refused(stack)
        if outside:
            raise refusal(stack.name, "load", verdict(outside))
        cli = await self.compose.get()
        output = await cli.run(
            stack.name, ["config", "--format", "json"], compose_file=stack.compose_file, cwd=stack.folder
        )
        try:
            model: dict[str, Any] = json.loads(output.stdout)
        except json.JSONDecodeError as exc:
            raise GatewayError(f"docker compose config printed something that is not JSON: {exc}") from exc
        return model

    async def defined_services(self, stack: Stack) -> list[str]:
        """The services the stack's compose model defines; [] when the model cannot be loaded."""
        entry = await self._entry(stack)
        return entry.services if entry is not None else []

    async def target(self, stack: Stack, *, fresh: bool = False) -> StackTarget:
        """Where the stack runs: Compose, or Swarm when its compose file says ``x-compose-agent: {target: swarm}``.

        Files that never mention the block are Compose stacks without running Compose. A folder
        whose model cannot be loaded counts as a swarm stack when the swarm runs one of its name,
        so that a broken file does not trap its tasks. A folder-less stack is a swarm stack when no
        compose container but a swarm service carries its name. ``fresh`` re-checks the files now
        (for ``up``) instead of trusting a recent answer.

        Raises:
            InvalidInput: a malformed ``x-compose-agent`` block (only with ``fresh``; reads fall back).
        """
        if stack.folder is None:
            swarm = await self.swarm_has(stack.name)
            return StackTarget("swarm") if swarm else StackTarget()
        if not await self._mentions_target(stack, fresh=fresh):
            return StackTarget()
        if fresh:
            self._defined.pop(stack.name, None)
            return stack_target(await self.config_model(stack))
        entry = await self._entry(stack)
        if entry is not None:
            return entry.target
        swarm = await self.swarm_has(stack.name)
        return StackTarget("swarm") if swarm else StackTarget()

    async def _mentions_target(self, stack: Stack, *, fresh: bool) -> bool:
        """:func:`_mentions_target`, cached like the model: every ps asks, and reading the files (in a
        worker thread) was a fifth of a ps call's CPU. Trusted for ``_DEFINED_TTL_S``, then kept while
        the files' signature holds."""
        assert stack.folder is not None
        now = time.monotonic()
        cached = self._mentions.get(stack.name)
        if cached is not None and not fresh and now - cached[0] < _DEFINED_TTL_S:
            return cached[2]
        signature = files_signature(stack.folder)
        if cached is not None and cached[1] == signature:
            self._mentions[stack.name] = (now, signature, cached[2])
            return cached[2]
        mentions = await to_thread.run_sync(_mentions_target, stack.folder)
        self._mentions[stack.name] = (now, signature, mentions)
        return mentions

    async def _entry(self, stack: Stack) -> _Defined | None:
        """What the stack's model says (services, target), cached by file mtimes; None when it cannot load."""
        assert stack.folder is not None
        now = time.monotonic()
        cached = self._defined.get(stack.name)
        if cached is not None and now - cached.checked < _DEFINED_TTL_S:
            return cached
        signature = files_signature(stack.folder)
        if cached is not None and cached.signature == signature:
            cached.checked = now
            return cached
        try:
            model = await self.config_model(stack)
            target = stack_target(model)
        except GatewayError as exc:
            # A broken compose file must not hide the containers that do run; ps reports what it can.
            logger.warning("cannot read the services of stack %s: %s", stack.name, str(exc).splitlines()[0])
            return None
        self._defined[stack.name] = _Defined(signature, now, _scaled_services(model), target)
        return self._defined[stack.name]

    def forget(self, project: str) -> None:
        """Drop what is cached about ``project``: a write may have changed it."""
        # The guard's verdict stays: it is re-checked against the files themselves before each use.
        self._defined.pop(project, None)
        self._mentions.pop(project, None)


def _scaled_services(model: Mapping[str, Any]) -> list[str]:
    """Services that should have containers: those not scaled to zero."""
    services_model = model.get("services") or {}
    return sorted(
        name
        for name, spec in services_model.items()
        if not (isinstance(spec, dict) and (spec.get("scale") == 0 or (spec.get("deploy") or {}).get("replicas") == 0))
    )


def _mentions_target(folder: Path) -> bool:
    """Whether any of the files that shape the model mentions the opt-in block at all.

    A cheap negative: a stack whose files never name it runs on Compose, and Compose need not run
    to say so. When a file does name it, Compose's model decides.
    """
    marker = TARGET_KEY.encode()
    for name in _MODEL_FILES:
        try:
            # Never a plain read: a FIFO named .env would hold this worker thread, and every listing after.
            data = read_regular(folder / name, limit=_MENTION_BYTES)
        except FileNotFoundError:
            continue
        except OSError:
            return True  # a link, a special file, unreadable: no cheap negative, so Compose's model decides
        if marker in data or len(data) > _MENTION_BYTES:
            return True
    return False


def files_signature(folder: Path) -> tuple[tuple[str, float, int], ...]:
    """mtime and size of the files that shape a stack's compose model."""
    parts = []
    for name in _MODEL_FILES:
        try:
            st = (folder / name).stat()
        except OSError:
            continue
        parts.append((name, st.st_mtime, st.st_size))
    return tuple(parts)
