"""What ``up`` would do, and what ``down`` would take, asked of Compose without changing anything.

A plan comes from two sources that answer different questions:

- ``docker compose up --dry-run`` says what Compose would actually do, including what no hash
  shows: a newer image, a recreated dependency, an orphan to remove.
- The ``com.docker.compose.config-hash`` label of each container, compared with
  ``docker compose config --hash '*'``, says *why*: whether the service's configuration changed.

If the dry run fails (say, a referenced image is missing and Compose wants to pull it), the plan
is built from the hashes alone and says so in ``warnings``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..engine.containers import SERVICE_LABEL
from ..models import DownRisk, PlanAction, PlanResult, VolumeRisk
from ..secretrefs import DIGEST_LABEL, changed_secrets

__all__ = ["HASH_LABEL", "build_actions", "rotated", "down_risk", "state_fingerprint", "render_plan", "render_down"]

logger = logging.getLogger(__name__)

HASH_LABEL = "com.docker.compose.config-hash"
_ANONYMOUS_RE = re.compile(r"^[0-9a-f]{64}$")


def _service_of(name: str, project: str, model: Mapping[str, Any], containers: Iterable[dict[str, Any]]) -> str | None:
    """The service a container name from a dry run belongs to."""
    for container in containers:
        if name in (n.lstrip("/") for n in container.get("Names") or []):
            return str(container["Labels"].get(SERVICE_LABEL))
    services: Mapping[str, Any] = model.get("services") or {}
    for service, spec in services.items():
        if isinstance(spec, dict) and spec.get("container_name") == name:
            return str(service)
    # Longest first: in "shop-api-web-1", service "api-web" wins over "api".
    for service in sorted(services, key=len, reverse=True):
        if re.fullmatch(rf"{re.escape(project)}[-_]{re.escape(service)}[-_]\d+", name):
            return str(service)
    return None


def build_actions(
    project: str,
    model: Mapping[str, Any],
    containers: list[dict[str, Any]],
    hashes: Mapping[str, str],
    dry_run: Mapping[str, set[str]] | None,
) -> list[PlanAction]:
    """One action per service: those the model defines, and those whose containers would be removed."""
    defined = set(hashes) or {str(s) for s in (model.get("services") or {})}
    by_service: dict[str, list[dict[str, Any]]] = {}
    for container in containers:
        by_service.setdefault(str(container["Labels"].get(SERVICE_LABEL)), []).append(container)
    simulated: dict[str, set[str]] = {}
    for name, statuses in (dry_run or {}).items():
        service = _service_of(name, project, model, containers)
        if service is not None:
            simulated.setdefault(service, set()).update(statuses)

    actions = []
    for service in sorted(defined | set(by_service)):
        have = by_service.get(service, [])
        statuses = simulated.get(service) or _guess(service in defined, have, hashes.get(service))
        actions.append(_action(service, service in defined, have, hashes.get(service), statuses))
    return actions


def rotated(actions: list[PlanAction], model: Mapping[str, Any], containers: list[dict[str, Any]]) -> list[PlanAction]:
    """The actions, each recreate that a secret changed in Vault saying which (by name; never a value)."""
    for action in actions:
        if action.action != "recreate":
            continue
        spec = (model.get("services") or {}).get(action.service)
        wanted = ((spec or {}).get("labels") or {}).get(DIGEST_LABEL) if isinstance(spec, Mapping) else None
        mine = [c for c in containers if c["Labels"].get(SERVICE_LABEL) == action.service]
        running = [c["Labels"].get(DIGEST_LABEL) for c in mine]
        changed = sorted({name for label in running for name in changed_secrets(label, wanted)})
        if changed:
            action.reason = f"secret(s) {', '.join(changed)} changed in Vault; {action.reason}"
    return actions


def _guess(defined: bool, have: list[dict[str, Any]], digest: str | None) -> set[str]:
    """What the dry run would have said, from the hashes and states alone."""
    if not defined:
        return {"Removing"}
    if not have:
        return {"Creating"}
    if any(c["Labels"].get(HASH_LABEL) != digest for c in have):
        return {"Recreate"}
    if any(c.get("State") != "running" for c in have):
        return {"Starting"}
    return {"Running"}


def _action(
    service: str, defined: bool, have: list[dict[str, Any]], digest: str | None, statuses: set[str]
) -> PlanAction:
    running_hashes = sorted({str(c["Labels"].get(HASH_LABEL, ""))[:12] for c in have})
    if statuses & {"Recreate", "Recreated"}:
        if digest is not None and any(c["Labels"].get(HASH_LABEL) != digest for c in have):
            reason = f"its configuration changed (config hash {', '.join(running_hashes)} -> {digest[:12]})"
        else:
            reason = (
                "its configuration is the same, but Compose recreates it (a newer image, or a recreated dependency)"
            )
        return PlanAction(service=service, action="recreate", reason=reason)
    if statuses & {"Creating", "Created"}:
        reason = "it has no container yet" if not have else f"{len(have)} container(s) exist; more are needed"
        return PlanAction(service=service, action="create", reason=reason)
    if statuses & {"Removing", "Removed"}:
        reason = "it is no longer in the compose file" if not defined else "it is scaled down"
        return PlanAction(service=service, action="remove", reason=reason)
    if statuses & {"Starting", "Started"}:
        states = sorted({str(c.get("State")) for c in have if c.get("State") != "running"})
        return PlanAction(service=service, action="start", reason=f"its container is {', '.join(states) or 'stopped'}")
    return PlanAction(service=service, action="unchanged", reason="it runs with the same configuration")


def down_risk(model: Mapping[str, Any] | None, containers: list[dict[str, Any]]) -> DownRisk:
    """The containers ``down`` removes, and the volumes whose data ``down --volumes`` deletes."""
    volumes: dict[str, VolumeRisk] = {}
    declared: Mapping[str, Any] = (model or {}).get("volumes") or {}
    for key, spec in declared.items():
        spec = spec if isinstance(spec, dict) else {}
        name = str(spec.get("name") or key)
        volumes[name] = VolumeRisk(name=name, kind="named", removed_by_down_volumes=not spec.get("external"))
        services = [
            str(service)
            for service, svc in ((model or {}).get("services") or {}).items()
            if any(isinstance(v, dict) and v.get("source") == key for v in (svc or {}).get("volumes") or [])
        ]
        volumes[name].services = sorted(services)
    for container in containers:
        service = str(container["Labels"].get(SERVICE_LABEL))
        for mount in container.get("Mounts") or []:
            if mount.get("Type") != "volume" or not mount.get("Name"):
                continue
            name = str(mount["Name"])
            entry = volumes.get(name)
            if entry is None:
                anonymous = _ANONYMOUS_RE.match(name) is not None
                entry = volumes[name] = VolumeRisk(
                    name=name, kind="anonymous" if anonymous else "named", removed_by_down_volumes=True
                )
            if service not in entry.services:
                entry.services = sorted([*entry.services, service])
    names = sorted(str((c.get("Names") or ["?"])[0]).lstrip("/") for c in containers)
    return DownRisk(containers=names, volumes=sorted(volumes.values(), key=lambda v: v.name))


def state_fingerprint(files: str, containers: list[dict[str, Any]]) -> str:
    """A digest of everything a confirmed call was planned against: the files its model is read from
    (``files``: a strict reading's digest, see ``Reading.digest``) and the stack's containers.

    Any change in between (a file edited, an included or env file too, a container recreated,
    stopped or started) changes it.
    """
    digest = hashlib.sha256()
    digest.update(files.encode("utf-8", "surrogateescape") + b"\0")
    rows = sorted(
        (
            str(c.get("Id")),
            str(c.get("State")),
            str(c.get("ImageID")),
            str((c.get("Labels") or {}).get(HASH_LABEL)),
        )
        for c in containers
    )
    digest.update(json.dumps(rows).encode())
    return digest.hexdigest()


def render_plan(plan: PlanResult) -> str:
    """A plan as lines a person reads in a confirmation prompt."""
    at = f" (version {plan.version} is on disk)" if plan.version is not None else ""
    lines = [f"What up does to '{plan.project}'{at}:"]
    lines += [f"  - {a.service}: {a.action}, {a.reason}" for a in plan.actions] or ["  (no services)"]
    if plan.policy.allowed:
        lines.append("Policy: allowed.")
    else:
        lines.append("Policy: REFUSED (up and deploy will refuse this file):")
        lines += [f"  - {violation.describe()}" for violation in plan.policy.violations]
        if plan.policy.error:
            lines.append(f"  - the guard could not judge it: {plan.policy.error}")
    lines += [f"Warning: {warning}" for warning in plan.warnings]
    return "\n".join(lines)


def render_down(project: str, risk: DownRisk, *, volumes: bool) -> str:
    """What ``down`` takes, as lines a person reads in a confirmation prompt."""
    lines = [f"What down does to '{project}':"]
    if risk.containers:
        lines.append(f"  - removes {len(risk.containers)} container(s): {', '.join(risk.containers)}")
        lines.append("    (files written inside a container, outside its volumes, are lost)")
    else:
        lines.append("  - no container to remove")
    for volume in risk.volumes:
        used = f" (used by {', '.join(volume.services)})" if volume.services else ""
        if volumes and volume.removed_by_down_volumes:
            lines.append(f"  - DELETES {volume.kind} volume {volume.name}{used} and its data")
        else:
            lines.append(f"  - keeps {volume.kind} volume {volume.name}{used}")
    return "\n".join(lines)
