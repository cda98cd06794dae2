"""Value constraints: where a key is allowed but its value decides what reaches the host.

Each check takes the :class:`~gateway.policy.findings.Findings` of the stack being judged, where
the value sits (:class:`At`), and the value as Compose normalised it, and records a violation for
what the value would do to the host or to another stack. ``docs/security.md`` gives each one's why.
"""

from __future__ import annotations

import os
import re
from typing import Any

from .findings import At, Check, Findings, entries, namespace_owner
from .images import own_image, registry

__all__ = ["At", "Check", "truthy"]


# security_opt values that only tighten confinement (or name a profile the host defines).
_SAFE_SECURITY_OPT = re.compile(
    r"no-new-privileges(?:[:=](?:true|false))?|apparmor[:=](?!unconfined$)[\w.-]+|label[:=](?:user|role|level):\S+"
)
_NAMESPACES = {"pid": "pid", "ipc": "ipc", "uts": "uts", "userns_mode": "userns_mode", "cgroup": "cgroup"}
_RUNTIMES = frozenset({"runc", "io.containerd.runc.v2", "crun", "runsc", "youki"})
# Logging drivers that keep lines on this engine, and their options that only size and label files.
_ROTATION = frozenset({"max-size", "max-file", "compress", "mode", "max-buffer-size"})
_LOG_OPTIONS = {
    "json-file": _ROTATION | {"labels", "labels-regex", "env", "env-regex", "tag"},
    "local": _ROTATION,
    "none": frozenset(),
}
_NETWORK_DRIVERS = frozenset({"bridge", "overlay"})
_NETWORK_OPTIONS = frozenset({"com.docker.network.driver.mtu", "com.docker.network.bridge.enable_icc"})
_VOLUME_OPTIONS = frozenset({"type", "o", "device"})
_TMPFS_FLAGS = re.compile(r"(?:size|mode|uid|gid|nr_inodes)=[\w.]+|nosuid|nodev|noexec|ro|rw")
_BIND_FLAGS = frozenset({"bind", "rbind", "ro", "rw", "nosuid", "nodev", "noexec"})
# COMPOSE_* variables a stack's .env may set: naming, profiles and output, nothing that loads more.
_COMPOSE_ENV = frozenset(
    {
        "COMPOSE_PROJECT_NAME",
        "COMPOSE_PROFILES",
        "COMPOSE_FILE",
        "COMPOSE_PATH_SEPARATOR",
        "COMPOSE_IGNORE_ORPHANS",
        "COMPOSE_REMOVE_ORPHANS",
        "COMPOSE_PARALLEL_LIMIT",
        "COMPOSE_ANSI",
        "COMPOSE_STATUS_STDOUT",
        "COMPOSE_MENU",
        "COMPOSE_PROGRESS",
    }
)


def truthy(rule: str, what: str) -> Check:
    """A key that is refused with ``rule`` whenever it is set to anything but false or empty."""

    def check(f: Findings, at: At, value: Any) -> None:
        if value not in (None, False, "", 0, [], {}):
            f.add(rule, at.service, what if value is True else f"{what}: {_short(value)}")

    return check


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


# --- services ----------------------------------------------------------------------------------


def service(f: Findings, at: At, spec: Any) -> None:
    """What depends on two keys at once: a built image's name, and the container's name."""
    if not isinstance(spec, dict):
        return
    name = at.key
    f.clean("service name", name)
    if spec.get("build") is not None and isinstance(spec.get("image"), str):
        own_image(f, name, "image", spec["image"])
    container = spec.get("container_name")
    if isinstance(container, str):
        f.clean("container_name", container)
        owner = namespace_owner(container, f.stack, f.others(), "-_")
        if owner not in (None, f.stack):
            f.add("namespace", name, f"container_name {container} is inside {owner}'s namespace")
        label = f.owner("container", container)
        if label is not None and label != f.stack:
            whose = f"project {label}" if label else "no compose project"
            f.add("namespace", name, f"container_name {container} is taken by a container of {whose}")


def namespace_mode(f: Findings, at: At, value: Any) -> None:
    """pid, ipc, uts, userns_mode, cgroup: never the host's, never another container's."""
    mode = str(value or "")
    if mode == "host" or mode.startswith("container:"):
        f.add("host_namespaces", at.service, f"{_NAMESPACES.get(at.key, at.key)} {mode}")


def network_mode(f: Findings, at: At, value: Any) -> None:
    mode = str(value or "")
    if mode == "host" or mode.startswith("container:"):
        f.add("host_namespaces", at.service, f"network_mode {mode}")
    elif mode and mode not in ("none", "bridge", "default") and not mode.startswith("service:"):
        if namespace_owner(f.clean("network_mode", mode), f.stack, f.others()) != f.stack:
            f.add("external_networks", at.service, f"network_mode {mode} joins a network the stack did not create")


def security_opt(f: Findings, at: At, value: Any) -> None:
    for option in value if isinstance(value, list) else [value]:
        if not _SAFE_SECURITY_OPT.fullmatch(str(option)):
            f.add("security_opt", at.service, f"security_opt {option}")


def volumes_from(f: Findings, at: At, value: Any) -> None:
    for source in value if isinstance(value, list) else [value]:
        if str(source).startswith("container:"):
            f.add("volumes_from", at.service, f"volumes_from {source}")


def runtime(f: Findings, at: At, value: Any) -> None:
    if value and str(value) not in _RUNTIMES:
        f.add("devices", at.service, f"runtime {value} (a runtime such as nvidia hands the container host devices)")


def oom_score_adj(f: Findings, at: At, value: Any) -> None:
    if isinstance(value, int) and value < 0:
        f.add("host_resources", at.service, f"oom_score_adj {value}")


def labels(f: Findings, at: At, value: Any) -> None:
    """Labels anywhere: clean names, and nothing under com.docker. (the engine's and Compose's own)."""
    for key, text in entries(value):
        f.clean("label", key)
        if isinstance(text, str) and "\x00" in text:
            f.clean(f"label {key}", text)
        if key.lower().startswith("com.docker."):
            f.add("reserved_labels", at.service, f"label {key} at {at.path} is reserved for the engine and Compose")


def mount(f: Findings, at: At, value: Any) -> None:
    """One entry of a service's ``volumes`` (always the long form in Compose's model)."""
    if not isinstance(value, dict):
        return
    kind, source = value.get("type"), value.get("source")
    if kind == "bind" and isinstance(source, str):
        f.host_path(at.service, "bind mount", source)
        propagation = str((value.get("bind") or {}).get("propagation") or "")
        if propagation in ("shared", "rshared"):
            f.add("host_bind", at.service, f"bind mount {source} propagates mounts back to the host ({propagation})")
    elif kind == "image" and isinstance(source, str):
        registry(f, at.service, "image mount", source)
    elif kind not in ("volume", "tmpfs", "bind", "image"):
        f.add("host_bind", at.service, f"mount type {kind} is not one the guard knows (bind, volume, tmpfs, image)")


def port(f: Findings, at: At, value: Any) -> None:
    reserved = f.context.policy.reserved_ports
    if not reserved or not isinstance(value, dict) or value.get("published") in (None, ""):
        return
    low, _, high = str(value["published"]).partition("-")
    if not low.isdigit() or not (high or low).isdigit():
        return
    taken = [p for p in reserved if int(low) <= p <= int(high or low)]
    if taken:
        f.add("ports", at.service, f"published port {value['published']} takes the reserved port {taken[0]}")


def logging(f: Findings, at: At, value: Any) -> None:
    if not isinstance(value, dict):
        return
    driver = value.get("driver")
    allowed = _LOG_OPTIONS.get(str(driver or "json-file"))
    if allowed is None:
        f.add("logging", at.service, f"logging driver {driver} sends the container's lines off this engine")
        return
    for option, _ in entries(value.get("options") or {}):
        if option not in allowed:
            f.add("logging", at.service, f"logging option {option} of driver {driver or 'default'}")


def watch_path(f: Findings, at: At, value: Any) -> None:
    if isinstance(value, str):
        f.file(at.service, "develop watch path", value)


def model_file(f: Findings, at: At, value: Any) -> None:
    """A file reference left in the model (Compose resolves env_file and label_file away, but if it did not)."""
    path = value.get("path") if isinstance(value, dict) else value
    if isinstance(path, str):
        f.file(at.service, at.key, path)


# --- top-level resources -------------------------------------------------------------------


def top_volume(f: Findings, at: At, spec: Any) -> None:
    spec = spec if isinstance(spec, dict) else {}
    key = f.clean("volume key", at.key)
    f.named(
        "external_volumes",
        "volume",
        key,
        str(spec.get("name") or f"{f.stack}_{key}"),
        external=bool(spec.get("external")),
    )
    driver = str(spec.get("driver") or "local")
    if driver != "local":
        f.add("volume_drivers", None, f"volume '{key}' uses the driver {driver}")
        return
    options = {str(k): str(v) for k, v in (spec.get("driver_opts") or {}).items()}
    for option in sorted(set(options) - _VOLUME_OPTIONS):
        f.add("host_bind", None, f"volume '{key}' sets the driver option {option}")
    flags = [flag for flag in options.get("o", "").split(",") if flag]
    kind = options.get("type")
    if kind == "tmpfs":
        for flag in flags:
            if not _TMPFS_FLAGS.fullmatch(flag):
                f.add("host_bind", None, f"volume '{key}' mounts tmpfs with the option {flag}")
    elif kind == "none" or "bind" in flags or "rbind" in flags:
        device = options.get("device", "")
        if not os.path.isabs(device):
            f.add("host_bind", None, f"volume '{key}' binds {device!r}, which the engine resolves from its own folder")
        else:
            f.host_path(None, f"volume '{key}' binds", device)
        for flag in flags:
            if flag not in _BIND_FLAGS:
                f.add("host_bind", None, f"volume '{key}' binds with the option {flag}")
    elif options:
        shown = options.get("device", "?")
        f.add("host_bind", None, f"volume '{key}' mounts {shown} (type {kind or '?'}) through the host")


def top_network(f: Findings, at: At, spec: Any) -> None:
    spec = spec if isinstance(spec, dict) else {}
    key = f.clean("network key", at.key)
    name = str(spec.get("name") or f"{f.stack}_{key}")
    if name == "host":
        f.add("host_namespaces", None, f"network '{key}' is the host's network")
    elif not (spec.get("external") and name in ("bridge", "none")):
        f.named("external_networks", "network", key, name, external=bool(spec.get("external")))
    driver = spec.get("driver")
    if driver not in (None, "") and driver not in _NETWORK_DRIVERS:
        f.add("network_drivers", None, f"network '{key}' uses the driver {driver}")
    for option in sorted(set(map(str, spec.get("driver_opts") or {})) - _NETWORK_OPTIONS):
        f.add("network_drivers", None, f"network '{key}' sets the driver option {option}")
    ipam = spec.get("ipam") or {}
    if isinstance(ipam, dict) and (
        ipam.get("config") or ipam.get("options") or ipam.get("driver") not in (None, "default")
    ):
        f.add("network_drivers", None, f"network '{key}' sets its own IPAM (a subnet can take over a host route)")


def top_secret(f: Findings, at: At, spec: Any) -> None:
    """A secret or config: its file inside the folder; external or swarm ones named as the stack's own."""
    if not isinstance(spec, dict):
        return
    kind = at.path.split(".", 1)[0][:-1]
    key = f.clean(f"{kind} key", at.key)
    if isinstance(spec.get("file"), str):
        f.host_path(None, f"{kind} '{key}' file", spec["file"], outside_rule="outside_files")
    external = bool(spec.get("external"))
    if external or f.context.swarm:
        f.named("external_secrets", kind, key, str(spec.get("name") or f"{f.stack}_{key}"), external=external)


def compose_env(f: Findings, names: tuple[str, ...]) -> None:
    """COMPOSE_* names in the stack's .env: Compose takes them for itself (see ``docs/security.md``)."""
    for name in names:
        if name.upper().startswith("COMPOSE_") and name not in _COMPOSE_ENV:
            f.add("compose_env", None, f".env sets {name}, which steers Compose itself")
