"""What ``up`` would do to a swarm stack: the stack file's services against the running service specs.

Compose's plan asks Compose (config hashes, ``up --dry-run``); neither knows Swarm. Here each
service of the stack file ``up`` would deploy (:func:`gateway.swarm.stackfile.to_stack_file` of the
same model) is compared with the service Swarm runs under the stack's name:

- the **image** with the reference the docker CLI recorded (``com.docker.stack.image``), or the
  spec's own image without a pinned digest;
- the **replicas** (and the mode: replicated or global) with the spec's;
- everything else through the digest the gateway set on the service when it deployed it
  (:data:`~gateway.swarm.stackfile.CONFIG_HASH_LABEL`). Where it differs, or the service was
  deployed without one, a few fields are compared one by one to say *what* changes: command,
  entrypoint, environment, ports, placement.

The result has the shape of a Compose plan. A service whose image or configuration changes is
``recreate`` (Swarm replaces its tasks in a rolling update); one that only gains or loses replicas
is ``create`` or ``remove`` (more tasks, or fewer), as a Compose service that scales; one the
gateway stopped (scaled to 0) is ``start``; one the file no longer has is ``remove`` (``up``
deploys with ``--prune``).
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from anyio import to_thread

from ..errors import SwarmUnavailable
from ..models import PlanAction
from .api import STOPPED_REPLICAS_LABEL, replicas
from .backend import SwarmBackend
from .stackfile import CONFIG_HASH_LABEL, stack_target, to_stack_file
from .tasks import service_name

__all__ = ["SwarmPlan", "plan_swarm", "swarm_actions"]

logger = logging.getLogger(__name__)

# Set by the docker CLI on every service of a stack: the image reference as the stack file gave it.
STACK_IMAGE_LABEL = "com.docker.stack.image"


@dataclass
class SwarmPlan:
    """The actions of a swarm stack's plan, and what the plan could not take into account."""

    actions: list[PlanAction]
    warnings: list[str] = field(default_factory=list)


async def plan_swarm(swarm: SwarmBackend, project: str, model: Mapping[str, Any]) -> SwarmPlan | None:
    """The plan of ``model`` as a swarm stack; None when the model does not ask for Swarm.

    Raises:
        InvalidInput: the ``x-compose-agent`` block is malformed, or the model has something the
            stack format refuses (``up`` would refuse it the same way).
        EngineUnavailable: the engine cannot be reached.
    """
    if stack_target(model).target != "swarm":
        return None
    warnings = []
    try:
        await to_thread.run_sync(swarm.check_manager, project)
    except SwarmUnavailable as exc:
        warnings.append(f"up would fail: {exc}")
    running = await to_thread.run_sync(swarm.api.services, project)
    return SwarmPlan(swarm_actions(project, model, running), warnings)


def swarm_actions(project: str, model: Mapping[str, Any], running: list[dict[str, Any]]) -> list[PlanAction]:
    """One action per service: those the stack file defines, and running ones it no longer has.

    Raises:
        InvalidInput: the model has something the stack format refuses.
    """
    wanted: dict[str, dict[str, Any]] = to_stack_file(model).document["services"]
    have = {service_name(project, svc): svc for svc in running}
    actions = []
    for name in sorted(set(wanted) | set(have)):
        svc = have.get(name)
        if name not in wanted:
            assert svc is not None
            actions.append(PlanAction(service=name, action="remove", reason=_removed(svc)))
        elif svc is None:
            actions.append(PlanAction(service=name, action="create", reason=_created(wanted[name])))
        else:
            actions.append(_compare(name, wanted[name], svc))
    return actions


def _created(entry: Mapping[str, Any]) -> str:
    if _mode(entry) == "global":
        return "it has no swarm service yet: Swarm creates it with one task on every eligible node"
    count = _wanted_replicas(entry)
    return f"it has no swarm service yet: Swarm creates it with {count} task{'s' if count != 1 else ''}"


def _removed(svc: Mapping[str, Any]) -> str:
    return "it is no longer in the compose file: up (docker stack deploy --prune) removes the service and its tasks"


def _compare(name: str, entry: Mapping[str, Any], svc: dict[str, Any]) -> PlanAction:
    spec = svc["Spec"]
    labels = spec.get("Labels") or {}
    changes = []
    have_image, want_image = _running_image(spec), str(entry.get("image") or "")
    if _normal_image(have_image) != _normal_image(want_image):
        changes.append(f"image {have_image} -> {want_image}")
    have_mode, want_mode = ("global" if "Global" in (spec.get("Mode") or {}) else "replicated"), _mode(entry)
    if have_mode != want_mode:
        return PlanAction(
            service=name,
            action="recreate",
            reason=f"its mode changes from {have_mode} to {want_mode}, which Swarm cannot update in place: "
            "up fails; down the stack first, then up",
        )
    want_digest = str(((entry.get("deploy") or {}).get("labels") or {}).get(CONFIG_HASH_LABEL, ""))
    have_digest = labels.get(CONFIG_HASH_LABEL)
    diffs = field_diffs(entry, spec)
    if have_digest is None:
        changes += diffs
    elif have_digest != want_digest:
        # The digest covers every field; the diffs name those compared one by one.
        changes += diffs or [f"its configuration changed (config hash {have_digest[:12]} -> {want_digest[:12]})"]
    have_count, want_count = replicas(svc), _wanted_replicas(entry)
    scale = f"replicas {have_count} -> {want_count}" if want_mode == "replicated" and have_count != want_count else ""
    if changes:
        reason = "rolling update of its tasks: " + "; ".join([*changes, *([scale] if scale else [])])
        return PlanAction(service=name, action="recreate", reason=reason)
    if scale:
        if have_count == 0 and STOPPED_REPLICAS_LABEL in labels:
            return PlanAction(
                service=name, action="start", reason=f"it was stopped (scaled to 0); up scales it back: {scale}"
            )
        if want_count > have_count:
            more = want_count - have_count
            return PlanAction(
                service=name, action="create", reason=f"{scale}: Swarm starts {more} more task{'s' if more > 1 else ''}"
            )
        fewer = have_count - want_count
        return PlanAction(
            service=name, action="remove", reason=f"{scale}: Swarm stops {fewer} task{'s' if fewer > 1 else ''}"
        )
    reason = "it runs with the same image, replicas and configuration"
    if have_digest is None:
        reason += " (deployed without the gateway's config hash: compared image, replicas, " + ", ".join(_FIELDS) + ")"
    return PlanAction(service=name, action="unchanged", reason=reason)


def _mode(entry: Mapping[str, Any]) -> str:
    mode = str((entry.get("deploy") or {}).get("mode") or "replicated")
    return "global" if mode == "global" else "replicated"


def _wanted_replicas(entry: Mapping[str, Any]) -> int:
    count = (entry.get("deploy") or {}).get("replicas")
    return 1 if count is None else int(count)


def _running_image(spec: Mapping[str, Any]) -> str:
    recorded = (spec.get("Labels") or {}).get(STACK_IMAGE_LABEL)
    if recorded:
        return str(recorded)
    return str(spec["TaskTemplate"]["ContainerSpec"].get("Image", "")).split("@", 1)[0]


def _normal_image(reference: str) -> str:
    """A reference as the engine stores it: no pinned digest, ``:latest`` when untagged, no default registry."""
    name = reference.split("@", 1)[0]
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/", "index.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


# -- the fields compared one by one, to say what changes ----------------------------------------

_FIELDS = ("command", "entrypoint", "environment", "ports", "placement")
_SHOWN = 80  # characters of a command line shown in a reason


def field_diffs(entry: Mapping[str, Any], spec: Mapping[str, Any]) -> list[str]:
    """What differs between a stack file entry and a service spec, field by field, as short diffs.

    Environment variables are named, never their values: a value may be a secret the plan must not show.
    """
    container = spec["TaskTemplate"].get("ContainerSpec") or {}
    diffs = []
    for name, want, have in (
        ("command", _words(entry.get("command")), list(container.get("Args") or [])),
        ("entrypoint", _words(entry.get("entrypoint")), list(container.get("Command") or [])),
    ):
        if want != have:
            diffs.append(f"{name} {_shown(have)} -> {_shown(want)}")
    want_env, have_env = _environment(entry.get("environment")), _environment(container.get("Env"))
    if want_env != have_env:
        added = sorted(set(want_env) - set(have_env))
        removed = sorted(set(have_env) - set(want_env))
        changed = sorted(k for k in set(want_env) & set(have_env) if want_env[k] != have_env[k])
        parts = [f"+{k}" for k in added] + [f"-{k}" for k in removed] + [f"~{k}" for k in changed]
        diffs.append("environment " + " ".join(parts))
    want_ports, have_ports = _entry_ports(entry.get("ports")), _spec_ports(spec)
    if want_ports != have_ports:
        parts = [f"+{_port(p)}" for p in sorted(want_ports - have_ports)]
        parts += [f"-{_port(p)}" for p in sorted(have_ports - want_ports)]
        diffs.append("ports " + " ".join(parts))
    want_place, have_place = _entry_placement(entry), _spec_placement(spec)
    if want_place != have_place:
        diffs.append(f"placement {_placement(have_place)} -> {_placement(want_place)}")
    return diffs


def _words(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def _shown(words: list[str]) -> str:
    text = shlex.join(words) if words else "(image default)"
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _environment(value: Any) -> dict[str, str | None]:
    """Variables by name, from a mapping (a stack file) or ``KEY=value`` items (a spec)."""
    if isinstance(value, Mapping):
        return {str(k): None if v is None else str(v) for k, v in value.items()}
    found: dict[str, str | None] = {}
    for item in value or []:
        key, sep, val = str(item).partition("=")
        found[key] = val if sep else None
    return found


_Port = tuple[int, int, str, str]


def _entry_ports(ports: Any) -> set[_Port]:
    found = set()
    for port in ports or []:
        if isinstance(port, Mapping):
            published = port.get("published")
            found.add(
                (
                    int(port.get("target") or 0),
                    int(published) if published not in (None, "") else 0,
                    str(port.get("protocol") or "tcp"),
                    str(port.get("mode") or "ingress"),
                )
            )
    return found


def _spec_ports(spec: Mapping[str, Any]) -> set[_Port]:
    ports = (spec.get("EndpointSpec") or {}).get("Ports") or []
    return {
        (
            int(p.get("TargetPort") or 0),
            int(p.get("PublishedPort") or 0),
            str(p.get("Protocol") or "tcp"),
            str(p.get("PublishMode") or "ingress"),
        )
        for p in ports
    }


def _port(port: _Port) -> str:
    target, published, protocol, mode = port
    text = f"{published}:{target}/{protocol}" if published else f"{target}/{protocol}"
    return text if mode == "ingress" else f"{text} ({mode})"


def _entry_placement(entry: Mapping[str, Any]) -> tuple[list[str], int]:
    placement = (entry.get("deploy") or {}).get("placement") or {}
    return sorted(map(str, placement.get("constraints") or [])), int(placement.get("max_replicas_per_node") or 0)


def _spec_placement(spec: Mapping[str, Any]) -> tuple[list[str], int]:
    placement = spec["TaskTemplate"].get("Placement") or {}
    return sorted(map(str, placement.get("Constraints") or [])), int(placement.get("MaxReplicas") or 0)


def _placement(value: tuple[list[str], int]) -> str:
    constraints, most = value
    parts = [f"constraints [{', '.join(constraints)}]" if constraints else "no constraints"]
    parts.append(f"at most {most} per node" if most else "no limit per node")
    return "(" + ", ".join(parts) + ")"
