"""The allowlist: every key path of Compose's model the guard knows, and how it judges each one.

A key path is dotted, with ``*`` for a name (a service, a volume, a label...) and ``x-*`` for an
extension field; a list's items sit at the list's own path (``services.*.volumes.type`` is the
``type`` of any entry of a service's ``volumes``). Each path is one of:

- **allowed**, with a shape (a fixed mapping, a mapping of names, a list, a plain value) and, where
  the value matters, a constraint from :mod:`gateway.policy.constraints`;
- **refused with a rule** when set (``privileged``, ``cap_add``, ``use_api_socket``...): the rule is
  the reason the refusal gives, and the operator can allow it per stack;
- **deliberately unknown**: known to Compose, reviewed, and not needed by ordinary stacks; refused
  with ``unknown_key`` like a key nobody reviewed.

Whatever is not in :data:`TABLE` is refused with ``unknown_key`` and its path: a key a new Compose
release adds does not run until someone reviews it and adds it here. ``tests/gateway/policy/
test_allowlist_schema.py`` checks the table against the schema inside the installed Compose binary.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from . import constraints as c
from . import images
from .constraints import truthy
from .findings import Check

__all__ = ["Key", "TABLE", "covered"]


@dataclass(frozen=True)
class Key:
    """How one key path is judged. ``None`` is accepted wherever a key is: Compose writes it for unset keys."""

    mapping: Literal["struct", "map"] | None = None  # a mapping of fixed keys, or of free names (children at ".*")
    sequence: bool = False  # a list here: each item is judged at this same path
    scalar: bool = False
    check: Check | None = None
    opaque: bool = False  # judged as a whole by ``check`` (or not at all), never walked into
    unknown: str = ""  # deliberately unknown: why it is not allowed


V = Key(scalar=True)
VL = Key(scalar=True, sequence=True)
S = Key(mapping="struct")
SL = Key(mapping="struct", sequence=True)
SV = Key(mapping="struct", scalar=True)
SLV = Key(mapping="struct", sequence=True, scalar=True)
M = Key(mapping="map")
ML = Key(mapping="map", sequence=True, scalar=True)  # list-or-dict: a mapping, or a list of "name=value"
X = Key(opaque=True)  # an extension field: Compose ignores it, and so does the guard


def refused(rule: str, what: str) -> Key:
    """A key refused with ``rule`` whenever it is set."""
    return Key(opaque=True, check=truthy(rule, what))


def unknown(why: str) -> Key:
    return Key(unknown=why)


def checked(key: Key, check: Check) -> Key:
    return replace(key, check=check)


def _under(prefix: str, entries: dict[str, Key]) -> dict[str, Key]:
    return {(f"{prefix}.{name}" if name else prefix): key for name, key in entries.items()}


def _struct(fields: str, *, extensions: bool = True) -> dict[str, Key]:
    """Plain-value fields of a mapping, named in one string."""
    table = {name: V for name in fields.split()}
    return {**table, "x-*": X} if extensions else table


_HOOK = {
    "": SL,
    "command": VL,
    "environment": ML,
    "environment.*": V,
    "privileged": refused("privileged", "a lifecycle hook with privileged: true"),
    "user": V,
    "working_dir": V,
    "x-*": X,
}
_ATTACHED = {"": SLV, **_struct("gid mode source target uid")}  # a service's secrets and configs
_BLKIO = {f"{kind}.{field}": V for kind in ("device_read_bps", "device_read_iops", "device_write_bps",
          "device_write_iops") for field in ("path", "rate")}  # fmt: skip
_BLKIO |= {kind: SL for kind in ("device_read_bps", "device_read_iops", "device_write_bps", "device_write_iops")}
_BLKIO |= {"": S, "weight": V, "weight_device": SL, "weight_device.path": V, "weight_device.weight": V}

_BUILD = {
    "": checked(SV, images.build),
    "additional_contexts": ML,
    "additional_contexts.*": V,
    "args": ML,
    "args.*": V,
    **{name: VL for name in ("cache_from", "cache_to", "entitlements", "platforms", "tags")},
    **_struct("context dockerfile dockerfile_inline network no_cache provenance pull sbom shm_size target"),
    "extra_hosts": ML,
    "extra_hosts.*": VL,
    "isolation": unknown("Windows isolation modes; not used on Linux engines"),
    "labels": checked(ML, c.labels),
    "labels.*": V,
    "privileged": refused("privileged", "build privileged: true"),
    "secrets": SLV,
    **_under("secrets", _struct("gid mode source target uid")),
    "ssh": ML,
    "ssh.*": V,
    "ulimits": M,
    "ulimits.*": SV,
    **_under("ulimits.*", _struct("hard soft")),
}

_DEPLOY = {
    "": S,
    **_struct("endpoint_mode mode replicas"),
    "labels": checked(ML, c.labels),
    "labels.*": V,
    "placement": S,
    **_under("placement", _struct("constraints max_replicas_per_node")),
    "placement.constraints": VL,
    "placement.preferences": SL,
    **_under("placement.preferences", _struct("spread")),
    "resources": S,
    "resources.x-*": X,
    "resources.limits": S,
    **_under("resources.limits", _struct("cpus memory pids")),
    "resources.reservations": S,
    **_under("resources.reservations", _struct("cpus memory")),
    "resources.reservations.devices": refused("devices", "deploy.resources.reservations.devices"),
    "resources.reservations.generic_resources": refused("devices", "generic resources (GPUs and other host devices)"),
    "restart_policy": S,
    **_under("restart_policy", _struct("condition delay max_attempts window")),
}
for _kind in ("rollback_config", "update_config"):
    _DEPLOY[_kind] = S
    _DEPLOY |= _under(_kind, _struct("delay failure_action max_failure_ratio monitor order parallelism"))

_DEVELOP = {
    "": S,
    "x-*": X,
    "watch": SL,
    **_under("watch", _struct("action initial_sync target")),
    "watch.ignore": VL,
    "watch.include": VL,
    "watch.path": checked(V, c.watch_path),
    "watch.exec": S,
    **_under("watch.exec", _struct("user working_dir")),
    "watch.exec.command": VL,
    "watch.exec.environment": ML,
    "watch.exec.environment.*": V,
    "watch.exec.privileged": refused("privileged", "a develop watch exec with privileged: true"),
}

_MOUNT = {
    "": checked(SLV, c.mount),
    **_struct("consistency read_only source target type"),
    "bind": S,
    **_under("bind", _struct("create_host_path propagation recursive selinux")),
    "image": S,
    **_under("image", _struct("subpath")),
    "tmpfs": S,
    **_under("tmpfs", _struct("mode size")),
    "volume": S,
    **_under("volume", _struct("nocopy subpath")),
    "volume.labels": checked(ML, c.labels),
    "volume.labels.*": V,
}

_SERVICE_NETWORK = {
    "": SV,
    **_struct("gw_priority interface_name ipv4_address ipv6_address mac_address priority"),
    "aliases": VL,
    "driver_opts": unknown("endpoint options go to the network driver; no ordinary stack needs them"),
    "link_local_ips": unknown("link-local addresses inside the stack's network; no ordinary stack needs them"),
}

_SERVICE = {
    "": checked(S, c.service),
    "x-*": X,
    **_struct(
        "attach container_name cpu_count cpu_percent cpu_period cpu_quota cpu_rt_period cpu_rt_runtime cpu_shares "
        "cpus cpuset domainname hostname init mac_address mem_limit mem_reservation mem_swappiness memswap_limit "
        "pids_limit platform pull_policy pull_refresh_after read_only restart scale shm_size stdin_open "
        "stop_grace_period stop_signal tty user working_dir",
        extensions=False,
    ),
    **{
        name: VL
        for name in "cap_drop command dns dns_opt dns_search entrypoint expose external_links group_add "
        "label_file links profiles tmpfs".split()
    },  # fmt: skip
    "annotations": unknown("annotations reach the OCI runtime, and some runtimes act on them"),
    "blkio_config": S,
    **_under("blkio_config", _BLKIO),
    **_under("build", _BUILD),
    "cap_add": refused("capabilities", "cap_add"),
    "cgroup": checked(V, c.namespace_mode),
    "cgroup_parent": refused("host_resources", "cgroup_parent"),
    **_under("configs", _ATTACHED),
    **_under("secrets", _ATTACHED),
    "credential_spec": unknown("Windows-only: reads a credential file or the host's registry"),
    "depends_on": Key(mapping="map", sequence=True, scalar=True),
    "depends_on.*": S,
    **_under("depends_on.*", _struct("condition required restart")),
    **_under("deploy", _DEPLOY),
    **_under("develop", _DEVELOP),
    "device_cgroup_rules": refused("devices", "device_cgroup_rules"),
    "devices": refused("devices", "devices"),
    "env_file": checked(SLV, c.model_file),
    **_under("env_file", _struct("format path required", extensions=False)),
    "environment": ML,
    "environment.*": V,
    "extends": SV,
    **_under("extends", _struct("service", extensions=False)),
    "extends.file": checked(V, c.model_file),
    "extra_hosts": ML,
    "extra_hosts.*": VL,
    "gpus": refused("devices", "gpus"),
    "healthcheck": S,
    **_under("healthcheck", _struct("disable interval retries start_interval start_period timeout")),
    "healthcheck.test": VL,
    "image": checked(V, images.image),
    "ipc": checked(V, c.namespace_mode),
    "isolation": unknown("Windows isolation modes; not used on Linux engines"),
    "labels": checked(ML, c.labels),
    "labels.*": V,
    "logging": checked(S, c.logging),
    "logging.driver": V,
    "logging.options": ML,
    "logging.options.*": V,
    "logging.x-*": X,
    "models": refused("provider", "models, which run the Docker Model Runner plugin on the host"),
    "network_mode": checked(V, c.network_mode),
    "networks": Key(mapping="map", sequence=True, scalar=True),
    **_under("networks.*", _SERVICE_NETWORK),
    "oom_kill_disable": refused("host_resources", "oom_kill_disable: true"),
    "oom_score_adj": checked(V, c.oom_score_adj),
    "pid": checked(V, c.namespace_mode),
    "ports": checked(SLV, c.port),
    **_under("ports", _struct("app_protocol host_ip mode name protocol published target")),
    **_under("post_start", _HOOK),
    **_under("pre_stop", _HOOK),
    "privileged": refused("privileged", "privileged: true"),
    "provider": refused("provider", "a provider service runs a program on the host"),
    "runtime": checked(V, c.runtime),
    "security_opt": checked(VL, c.security_opt),
    "storage_opt": ML,
    "storage_opt.*": V,
    "sysctls": ML,
    "sysctls.*": V,
    "ulimits": M,
    "ulimits.*": SV,
    **_under("ulimits.*", _struct("hard soft")),
    "use_api_socket": refused("docker_socket", "use_api_socket mounts the engine's socket into the container"),
    "userns_mode": checked(V, c.namespace_mode),
    "uts": checked(V, c.namespace_mode),
    **_under("volumes", _MOUNT),
    "volumes_from": checked(VL, c.volumes_from),
}

_NETWORK = {
    "": checked(SV, c.top_network),
    **_struct("attachable driver enable_ipv4 enable_ipv6 internal name"),
    "driver_opts": M,
    "driver_opts.*": V,
    "external": SV,
    **_under("external", _struct("name")),
    "ipam": S,
    **_under("ipam", _struct("driver")),
    "ipam.config": SL,
    **_under("ipam.config", _struct("gateway ip_range subnet")),
    "ipam.config.aux_addresses": M,
    "ipam.config.aux_addresses.*": V,
    "ipam.options": M,
    "ipam.options.*": V,
    "labels": checked(ML, c.labels),
    "labels.*": V,
}

_VOLUME = {
    "": checked(SV, c.top_volume),
    **_struct("driver name"),
    "driver_opts": M,
    "driver_opts.*": V,
    "external": SV,
    **_under("external", _struct("name")),
    "labels": checked(ML, c.labels),
    "labels.*": V,
}

_SECRET = {
    "": checked(SV, c.top_secret),
    **_struct("environment file name"),
    "external": SV,
    **_under("external", _struct("name", extensions=False)),
    "labels": checked(ML, c.labels),
    "labels.*": V,
    "driver": unknown("swarm secret driver plugins fetch secrets from elsewhere"),
    "driver_opts": unknown("options of a swarm secret driver plugin"),
    "template_driver": unknown("swarm templates expand a secret with the service's data"),
}

TABLE: dict[str, Key] = {
    "": S,
    "name": V,
    "version": V,
    "x-*": X,
    # Compose merges include in and drops it from the model; the reader judged it before Compose ran.
    "include": X,
    "services": M,
    **_under("services.*", _SERVICE),
    "networks": M,
    **_under("networks.*", _NETWORK),
    "volumes": M,
    **_under("volumes.*", _VOLUME),
    "secrets": M,
    **_under("secrets.*", _SECRET),
    "configs": M,
    **_under("configs.*", {k: v for k, v in _SECRET.items() if k not in ("driver", "driver_opts")} | {"content": V}),
    "models": refused("provider", "models, which run the Docker Model Runner plugin on the host"),
}


def covered(path: str) -> Key | None:
    """The entry that classifies ``path``: its own, or that of an ancestor judged as a whole (opaque or unknown)."""
    if path in TABLE:
        return TABLE[path]
    parts = path.split(".")
    for end in range(len(parts) - 1, 0, -1):
        ancestor = TABLE.get(".".join(parts[:end]))
        if ancestor is not None and (ancestor.opaque or ancestor.unknown):
            return ancestor
    return None
