"""Swarm's side of a compose file: the opt-in block, and the stack file ``docker stack deploy`` is given.

Swarm is handed Compose's own normalised model (``docker compose config``), the very model the
policy guard judged, never the raw files: the docker CLI's loader would interpolate variables from
the gateway's own environment, knows no ``.env``, and resolves paths its own way. Compose's output
keeps ``$$`` escaped, so the docker CLI's second interpolation pass gives back the same values.

The docker CLI reads the older "version 3" stack format. A few fields Compose writes in a newer
form are rewritten here; Compose-only fields with no meaning in Swarm are dropped and named in
the result; a field whose loss would change what is exposed (a port bound to one host address)
is refused. Anything else the CLI does not know, it refuses itself, before creating anything.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from ..errors import InvalidInput

STACK_FILE_VERSION = "3.9"

__all__ = [
    "CONFIG_HASH_LABEL",
    "TARGET_KEY",
    "DEFAULT_RESOLVE_IMAGE",
    "ResolveImage",
    "StackFile",
    "StackTarget",
    "Target",
    "config_hash",
    "stack_target",
    "to_stack_file",
]

TARGET_KEY = "x-compose-agent"
Target = Literal["compose", "swarm"]
ResolveImage = Literal["always", "changed", "never"]
# The gateway holds no registry credentials and needs no egress of its own; with "never" local
# images deploy without a registry round trip, and every node still pulls the tag it is given.
# A stack that wants every node pinned to one digest asks for "always" in its opt-in block.
DEFAULT_RESOLVE_IMAGE: ResolveImage = "never"
_RESOLVE_CHOICES: tuple[ResolveImage, ...] = ("always", "changed", "never")

# Compose-only fields that Swarm has no behaviour for; the stack format refuses them, so they are
# dropped and named in the deploy's events.
_DROPPED: dict[str, str] = {
    "depends_on": "Swarm starts every service at once",
    "pull_policy": "every node pulls the image itself",
    "profiles": "Compose already left out inactive profiles",
    "label_file": "Compose already merged it into labels",
    "develop": "watch mode is a Compose feature",
    "attach": "there is no attached output",
}
# Compose's service-level resource fields, and where Swarm keeps them.
_RESOURCES: dict[str, tuple[str, str]] = {
    "cpus": ("limits", "cpus"),
    "mem_limit": ("limits", "memory"),
    "mem_reservation": ("reservations", "memory"),
    "pids_limit": ("limits", "pids"),
}
_ANY_ADDRESS = {"", "0.0.0.0", "::"}
# Set on each service the gateway deploys: a digest of its stack file entry but for its image and
# replicas, which `plan` reads from the spec itself. What else changed is known by the digest alone:
# the spec Swarm keeps is the docker CLI's translation of the entry, not the entry.
CONFIG_HASH_LABEL = "com.compose-agent.config-hash"


@dataclass(frozen=True)
class StackTarget:
    """Where a stack runs, from its ``x-compose-agent`` block; Compose when there is none."""

    target: Target = "compose"
    resolve_image: ResolveImage = DEFAULT_RESOLVE_IMAGE


def stack_target(model: Mapping[str, Any]) -> StackTarget:
    """The target a compose model asks for.

    Raises:
        InvalidInput: the ``x-compose-agent`` block is malformed, saying what it may hold.
    """
    block = model.get(TARGET_KEY)
    if block is None:
        return StackTarget()
    help_text = f"write it as `{TARGET_KEY}: {{target: swarm}}` (target: compose or swarm; resolve_image: "
    help_text += f"{', '.join(_RESOLVE_CHOICES)}; secrets: see docs/secrets.md)"
    if not isinstance(block, Mapping):
        raise InvalidInput(f"the top-level {TARGET_KEY} must be a mapping; {help_text}")
    # secrets: references into Vault, checked by gateway.secretrefs.
    unknown = sorted(set(block) - {"target", "resolve_image", "secrets"})
    if unknown:
        raise InvalidInput(f"{TARGET_KEY} has unknown key(s) {', '.join(map(str, unknown))}; {help_text}")
    target = block.get("target", "compose")
    if target not in ("compose", "swarm"):
        raise InvalidInput(f"{TARGET_KEY}.target is {str(target)[:40]!r}; {help_text}")
    if target == "swarm" and block.get("secrets"):
        raise InvalidInput(
            f"{TARGET_KEY}.secrets (secrets from Vault) run on Compose only: a swarm stack keeps its secrets "
            "in the swarm (`docker secret create`, then `secrets: {db: {external: true}}`)"
        )
    resolve = block.get("resolve_image", DEFAULT_RESOLVE_IMAGE)
    if resolve not in _RESOLVE_CHOICES:
        raise InvalidInput(f"{TARGET_KEY}.resolve_image is {str(resolve)[:40]!r}; {help_text}")
    return StackTarget(cast(Target, target), cast(ResolveImage, resolve))


@dataclass
class StackFile:
    """The stack file for ``docker stack deploy``, and what was changed on the way."""

    document: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def to_stack_file(model: Mapping[str, Any], services: list[str] | None = None) -> StackFile:
    """Rewrite Compose's normalised model into the stack format, keeping only ``services`` if given.

    Raises:
        InvalidInput: a service name the model lacks, or a field Swarm would silently widen
            (a port published on one host address, a published port range).
    """
    document = {k: copy.deepcopy(v) for k, v in model.items() if k != "name"}
    # Docker CLIs before 23 refuse a stack file without a version ("unsupported Compose file
    # version: 1.0"); 3.9 is the newest they know, and later CLIs read it unchanged.
    document["version"] = STACK_FILE_VERSION
    all_services: dict[str, Any] = document.get("services") or {}
    if services:
        unknown = sorted(set(services) - set(all_services))
        if unknown:
            raise InvalidInput(
                f"no service(s) {', '.join(unknown)} in this stack; its services: {', '.join(sorted(all_services))}"
            )
        all_services = {name: spec for name, spec in all_services.items() if name in services}
    document["services"] = all_services
    dropped: dict[str, list[str]] = {}
    for name, spec in all_services.items():
        _rewrite_service(name, spec, dropped)
    notes = [f"Swarm ignores {key} ({_DROPPED[key]}): {', '.join(names)}" for key, names in sorted(dropped.items())]
    return StackFile(document, notes)


def _rewrite_service(name: str, spec: dict[str, Any], dropped: dict[str, list[str]]) -> None:
    # Compose writes "no value" as null (entrypoint: null); the stack format wants the key absent.
    # A null network entry means "attach with defaults" and stays.
    for key in [k for k, v in spec.items() if v is None]:
        del spec[key]
    for key in _DROPPED:
        if key in spec:
            del spec[key]
            dropped.setdefault(key, []).append(name)
    deploy = spec.setdefault("deploy", {})
    if "scale" in spec:
        scale = spec.pop("scale")
        deploy.setdefault("replicas", scale)
    resources = deploy.setdefault("resources", {})
    for key, (section, target) in _RESOURCES.items():
        if key in spec:
            resources.setdefault(section, {}).setdefault(target, spec.pop(key))
    for section in ("limits", "reservations"):
        if "cpus" in resources.get(section, {}):
            resources[section]["cpus"] = str(resources[section]["cpus"])
    if "ports" in spec:
        spec["ports"] = [_port(name, port) for port in spec["ports"]]
    if "devices" in spec:
        # Swarm ignores devices (the docker CLI says so); it wants them in the short form to say it.
        spec["devices"] = [_device(d) for d in spec["devices"]]
    labels = deploy.get("labels") or {}
    if isinstance(labels, list):  # the short form, should a model carry it: ["key=value", ...]
        labels = dict(str(item).partition("=")[::2] for item in labels)
    deploy["labels"] = {**labels, CONFIG_HASH_LABEL: config_hash(spec)}


def config_hash(entry: Mapping[str, Any]) -> str:
    """The digest of a stack file's service entry, leaving out its image, its replicas and this digest.

    The image and the replicas are compared with the running service's spec directly; everything
    else only through this digest, kept in the service's :data:`CONFIG_HASH_LABEL`.
    """
    rest = {k: v for k, v in entry.items() if k != "image"}
    deploy = {k: v for k, v in (rest.get("deploy") or {}).items() if k != "replicas"}
    labels = deploy.get("labels")
    if isinstance(labels, Mapping):
        deploy["labels"] = {k: v for k, v in labels.items() if k != CONFIG_HASH_LABEL}
    rest["deploy"] = deploy
    canonical = json.dumps(rest, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _port(service: str, port: Any) -> Any:
    if not isinstance(port, dict):
        return port
    port = dict(port)
    host_ip = port.pop("host_ip", "")
    if host_ip not in _ANY_ADDRESS:
        raise InvalidInput(
            f"service '{service}' publishes port {port.get('target')} on {host_ip} only; Swarm publishes every "
            "port on every address of every node, so this would expose it more widely. Remove the address, "
            "keep the service on an internal network, or run this stack with Compose"
        )
    published = port.get("published")
    if isinstance(published, str):
        if not published.isdigit():
            raise InvalidInput(
                f"service '{service}' publishes the port range {published}; Swarm publishes one port per entry: "
                "list each port on its own"
            )
        port["published"] = int(published)
    return port


def _device(device: Any) -> Any:
    if not isinstance(device, dict):
        return device
    return ":".join(str(device[k]) for k in ("source", "target", "permissions") if device.get(k))
