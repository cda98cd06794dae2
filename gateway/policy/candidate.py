"""A compose file to judge before it runs: the stack's own, or one an agent sent, and the checks on it.

A :class:`Candidate` is a compose file as Compose reads it *for a stack*: relative paths and the
``.env`` resolve in the stack's folder. A file an agent sends is written into a scratch folder on
the stacks dir's file system and read with ``--project-directory`` set to the stack's folder (which
may not exist yet), so its judged model and plan come out as they will after the deploy, and the
exact bytes the guard judged are the ones that get installed.

What a plan asks Compose of a judged model (its config hashes, a dry run of ``up``) is asked of the
model itself, from its private file (:class:`~gateway.compose.runfile.RunFile`), and only once the
guard allows it; :func:`executes_on_the_host` says when even a dry run must not happen.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio import to_thread

from ..compose.cli import ComposeCli
from ..compose.runfile import RunFile
from ..deploy.versions import Snapshot, VersionStore
from ..errors import ComposeFailed, GatewayError, InvalidInput
from ..stacks import Stack

__all__ = [
    "Candidate",
    "candidate_for",
    "config_hashes",
    "dry_run_up",
    "describe_failure",
    "executes_on_the_host",
    "rejected",
    "stack_of",
    "validate_compose_yaml",
    "validate_env",
    "render_env",
    "MAX_COMPOSE_BYTES",
    "MAX_ENV_NAMES",
]

MAX_COMPOSE_BYTES = 256 * 1024
MAX_ENV_NAMES = 200
MAX_ENV_VALUE = 16 * 1024
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Compose reads these from a stack's .env for itself (which files, which project, which engine).
_STEERING_PREFIXES = ("COMPOSE_", "DOCKER_")
# Recreated containers show up in a dry run as "<12 hex>_<name>" once renamed aside.
_RENAMED_RE = re.compile(r"^[0-9a-f]{12}_")
_CONTAINER_EVENT_RE = re.compile(r"^Container (?P<name>[^\s:]+): (?P<status>[A-Za-z][A-Za-z ]*?)(?: \(.*\))?$")


@dataclass(frozen=True)
class Candidate:
    """A compose file as Compose reads it for a stack: relative paths resolve in ``project_directory``.

    For a stack's own file the directory is its folder. For a compose file not yet deployed, the
    file sits in a scratch folder and the directory is still the stack's folder (which may not exist
    yet), so paths, hashes and the plan come out as they will after the deploy.
    """

    project: str
    compose_file: Path
    project_directory: Path
    env_file: Path | None = None


async def config_hashes(cli: ComposeCli, run: RunFile, project: str) -> dict[str, str]:
    """Each service's configuration hash, as Compose stamps it on the containers it creates from ``run``."""
    output = await run.run(cli, project, ["config", "--hash", "*"])
    hashes: dict[str, str] = {}
    for line in output.stdout.splitlines():
        service, _, digest = line.strip().partition(" ")
        if service and digest:
            hashes[service] = digest
    return hashes


async def dry_run_up(cli: ComposeCli, run: RunFile, project: str) -> dict[str, set[str]]:
    """What ``up --remove-orphans`` of ``run`` would do to each container, by container name.

    ``--pull never`` and ``--no-build``: a plan must not reach a registry or send a build context.
    Call it only for a judged, allowed model that :func:`executes_on_the_host` finds nothing in.

    Raises:
        ComposeFailed: Compose could not simulate the run.
    """
    output = await run.run(
        cli, project, ["up", "--dry-run", "--detach", "--remove-orphans", "--pull", "never", "--no-build"]
    )
    statuses: dict[str, set[str]] = {}
    for line in output.events:
        match = _CONTAINER_EVENT_RE.match(line.strip())
        if match:
            name = _RENAMED_RE.sub("", match["name"])
            statuses.setdefault(name, set()).add(match["status"])
    return statuses


def executes_on_the_host(model: Mapping[str, Any]) -> str | None:
    """What in a model Compose would execute on the host even in a dry run (a provider service's
    program, the model runner), said in a few words; None when there is nothing.

    ``docker compose up --dry-run`` runs a provider's program for real (seen on Compose 2.40.3); the
    policy refuses providers and models, but an operator may allow them for a stack. Lifecycle hooks
    are only announced by a dry run, never executed: no container is created.
    """
    services: Mapping[str, Any] = model.get("services") or {}
    providers = sorted(str(name) for name, spec in services.items() if isinstance(spec, dict) and spec.get("provider"))
    if providers:
        return f"service(s) {', '.join(providers)} run a provider program"
    if model.get("models") or any(isinstance(spec, dict) and spec.get("models") for spec in services.values()):
        return "the stack uses models, which the model runner serves"
    return None


@asynccontextmanager
async def candidate_for(
    store: VersionStore,
    folder: Path,
    project: str,
    existing: tuple[Path, Snapshot] | None,
    proposed: bytes | None,
    env: bytes | None,
) -> AsyncIterator[Candidate]:
    """The candidate to judge: the stack's own file, or ``proposed`` and ``env`` in a scratch folder.

    The scratch folder always holds a ``.env`` (empty for none), so Compose never falls back to
    the one in the stack's folder.
    """
    if proposed is None:
        assert existing is not None
        yield Candidate(project, existing[0], folder)
        return

    # Written by descriptor into a folder made a moment ago, never through a link (see gateway.folders).
    files = {"compose.yaml": proposed, ".env": env or b""}
    try:
        tmp = await to_thread.run_sync(store.make_scratch, project, files)
    except OSError as exc:
        raise GatewayError(
            f"cannot write a scratch folder under the stacks dir ({exc.strerror or exc}); a compose file is "
            f"checked there before anything else, so the stacks dir must be writable"
        ) from exc
    try:
        yield Candidate(project, tmp / "compose.yaml", folder, tmp / ".env")
    finally:
        with anyio.CancelScope(shield=True):
            await to_thread.run_sync(store.remove_scratch, tmp)


def describe_failure(exc: ComposeFailed) -> str:
    """The last line of Compose's complaint, for a plan's warnings."""
    text = (exc.stderr_tail or str(exc)).strip()
    return text.splitlines()[-1][:500] if text else "docker compose failed"


def validate_compose_yaml(compose_yaml: object) -> bytes:
    """The compose file as bytes, bounded and free of NUL; Compose itself judges the rest.

    Raises:
        InvalidInput: not a string, empty, too large, or holding NUL characters.
    """
    if not isinstance(compose_yaml, str) or not compose_yaml.strip():
        raise InvalidInput("compose_yaml must be the text of a compose file (YAML), not empty")
    data = compose_yaml.encode("utf-8", "surrogatepass")
    if len(data) > MAX_COMPOSE_BYTES:
        raise InvalidInput(f"compose_yaml is {len(data)} bytes; the limit is {MAX_COMPOSE_BYTES}")
    if b"\0" in data:
        raise InvalidInput("compose_yaml holds a NUL character; send plain YAML text")
    return data


def validate_env(env: object) -> dict[str, str]:
    """``env`` if every name and value can go into a ``.env`` file as it is.

    Raises:
        InvalidInput: naming the first bad entry and the rule it breaks.
    """
    if not isinstance(env, Mapping):
        raise InvalidInput("env must be an object of NAME: value strings")
    if len(env) > MAX_ENV_NAMES:
        raise InvalidInput(f"env has {len(env)} names; the limit is {MAX_ENV_NAMES}")
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
            raise InvalidInput(
                f"env name {str(name)[:80]!r} is not allowed: names match ^[A-Za-z_][A-Za-z0-9_]*$ (at most 128)"
            )
        if name.upper().startswith(_STEERING_PREFIXES):
            raise InvalidInput(
                f"env name {name!r} is not allowed: COMPOSE_* and DOCKER_* variables steer Compose itself, "
                "not the stack"
            )
        if not isinstance(value, str):
            raise InvalidInput(f"env value of {name} must be a string")
        if len(value) > MAX_ENV_VALUE:
            raise InvalidInput(f"env value of {name} is longer than {MAX_ENV_VALUE} characters")
        if any(ch in value for ch in "\n\r\0"):
            raise InvalidInput(f"env value of {name} holds a newline, carriage return or NUL; one line only")
    return dict(env)


def render_env(env: Mapping[str, str]) -> bytes:
    """A ``.env`` that Compose reads back as exactly these values.

    Double quotes, with backslash, quote and dollar escaped: nothing is interpolated or unescaped.
    """
    lines = []
    for name in sorted(env):
        value = env[name].replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
        lines.append(f'{name}="{value}"\n')
    return "".join(lines).encode()


def rejected(exc: ComposeFailed, candidate: Candidate) -> InvalidInput:
    """Compose's complaint about a candidate, without the scratch folder's path in it."""
    detail = (exc.stderr_tail or str(exc)).replace(str(candidate.compose_file), "compose_yaml")
    detail = detail.replace(str(candidate.compose_file.parent), "<scratch>")
    return InvalidInput(f"Compose rejects this compose file; nothing was changed:\n{detail}")


def stack_of(folder: Path, existing: tuple[Path, Snapshot] | None) -> Stack:
    """The stack as the guard and the catalog see it; a new one's file will be compose.yaml."""
    return Stack(folder.name, folder, existing[0] if existing is not None else folder / "compose.yaml")
