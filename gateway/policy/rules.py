"""The policy guard's rules: what a compose file may ask of the host, judged on Compose's own model.

Whoever can write a compose file and call ``up`` is root on the host unless something stands
between them. :func:`judge` reads the model ``docker compose config --format json`` prints (so
Compose, not a hand-written parser, decides what the file means) plus the file references that
normalisation resolves away (:mod:`gateway.policy.references`), and returns every violation with its rule
id. Only the operator relaxes it, in ``config.json``; see ``docs/security.md`` for each rule's why.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..compose.cli import SECRET_ENV, STEERING_ENV
from ..models import Verdict, Violation
from .references import FileReference

__all__ = ["RULES", "CONFIRMABLE_TOOLS", "Policy", "StackRules", "judge", "verdict", "runtime_sockets"]

# Rule id -> what it refuses. The ids are a contract: refusals, config.json and docs name them.
RULES: dict[str, str] = {
    "privileged": "privileged containers, privileged lifecycle hooks and builds, build entitlements",
    "capabilities": "any cap_add",
    "host_namespaces": "the host's (or another container's) network, pid, ipc, uts, userns or cgroup namespace",
    "devices": "host devices, device cgroup rules and GPUs",
    "security_opt": "security options other than no-new-privileges and named AppArmor/SELinux labels",
    "host_bind": "bind mounts and local volumes whose host path is outside the stack folder and allowed roots",
    "docker_socket": "the container runtime's socket, or a folder holding it",
    "volumes_from": "volumes of a container outside the stack",
    "outside_files": "any file reference (include, extends, env_file, build context, secret...) outside the folder",
    "provider": "provider services, which run a program on the host",
    "external_volumes": "volumes the stack did not create: external, or named outside the stack's namespace",
    "external_networks": "networks the stack did not create: external, or named outside the stack's namespace",
    "volume_drivers": "volume driver plugins, which mount what they like",
    "host_resources": "cgroup_parent, oom_kill_disable and a negative oom_score_adj",
}
# Tools a `policy.confirm` entry may name (the confirmation flow itself is issue 12's).
CONFIRMABLE_TOOLS = frozenset({"up", "down", "restart", "start", "stop", "deploy", "rollback"})

_STACK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Sockets that give whoever reaches them the container runtime, hence root on the host.
_DEFAULT_SOCKETS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/var/run/docker/containerd/containerd.sock",
    "/run/docker/containerd/containerd.sock",
)
# security_opt values that only tighten confinement (or name a profile the host defines).
_SAFE_SECURITY_OPT = re.compile(
    r"no-new-privileges(?:[:=](?:true|false))?|apparmor[:=](?!unconfined$)[\w.-]+|label[:=](?:user|role|level):\S+"
)
_NAMESPACE_KEYS = ("pid", "ipc", "uts", "userns_mode", "cgroup")


class StackRules(BaseModel):
    """The operator's exceptions for one stack."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allow: tuple[str, ...] = Field(default=(), description="Rule ids this stack may break")

    @field_validator("allow")
    @classmethod
    def _known_rules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [rule for rule in value if rule not in RULES]
        if unknown:
            raise ValueError(f"unknown rule id(s) {', '.join(unknown)}; known: {', '.join(RULES)}")
        return value


class Policy(BaseModel):
    """``config.json``'s ``policy`` object. Only the operator writes it; no tool or token changes it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_bind_roots: tuple[Path, ...] = Field(
        default=(), description="Host folders any stack may bind-mount (never the runtime's socket)"
    )
    stacks: dict[str, StackRules] = Field(default_factory=dict, description="Per-stack exceptions, by stack name")
    confirm: tuple[str, ...] = Field(default=(), description="Tools that act only on a confirmed second call")
    pass_env: tuple[str, ...] = Field(default=(), description="Extra variables of the gateway's env Compose may see")

    @field_validator("allowed_bind_roots")
    @classmethod
    def _absolute_roots(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        roots = []
        for root in value:
            if not root.is_absolute():
                raise ValueError(f"allowed bind root {str(root)!r} must be an absolute path")
            normal = Path(os.path.normpath(root))
            if normal == Path("/"):
                raise ValueError(
                    "allowed bind root '/' would allow every host path; allow host_bind for the stacks that need it"
                )
            roots.append(normal)
        return tuple(roots)

    @field_validator("stacks")
    @classmethod
    def _stack_names(cls, value: dict[str, StackRules]) -> dict[str, StackRules]:
        bad = [name for name in value if not _STACK_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"stack name(s) {', '.join(map(repr, bad))} do not match ^[a-z0-9][a-z0-9_-]*$")
        return value

    @field_validator("confirm")
    @classmethod
    def _confirmable(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [tool for tool in value if tool not in CONFIRMABLE_TOOLS]
        if unknown:
            known = ", ".join(sorted(CONFIRMABLE_TOOLS))
            raise ValueError(f"confirm names unknown tool(s) {', '.join(unknown)}; known: {known}")
        return value

    @field_validator("pass_env")
    @classmethod
    def _passable(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"pass_env entry {name[:60]!r} is not an environment variable name")
            if name in SECRET_ENV or name in STEERING_ENV:
                raise ValueError(f"pass_env may not hold {name}: the gateway never hands it to Compose")
        return value

    def allows(self, stack: str, rule: str) -> bool:
        """True when the operator lets ``stack`` break ``rule``."""
        rules = self.stacks.get(stack)
        return rules is not None and rule in rules.allow


def runtime_sockets(docker_host: str | None) -> tuple[str, ...]:
    """The container runtime's sockets: the well-known paths plus the one ``DOCKER_HOST`` names."""
    sockets = list(_DEFAULT_SOCKETS)
    if docker_host and docker_host.startswith("unix://"):
        sockets.append(docker_host.removeprefix("unix://"))
    return tuple(dict.fromkeys(sockets))


def verdict(violations: Sequence[Violation]) -> Verdict:
    """The stack-level summary of a list of violations."""
    return Verdict(
        allowed=not violations, rules=list(dict.fromkeys(v.rule for v in violations)), violations=list(violations)
    )


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass
class _Judge:
    stack: str
    folder: str
    policy: Policy
    sockets: tuple[str, ...]
    found: list[Violation] = field(default_factory=list)
    # Every host path judged, and where it resolved: a cached verdict holds while these do.
    resolved: dict[str, str] = field(default_factory=dict)

    def add(self, rule: str, service: str | None, value: str) -> None:
        if self.policy.allows(self.stack, rule):
            return
        allow = f'"{rule}" in policy.stacks.{self.stack}.allow'
        if rule == "host_bind":
            allow = f"a root in policy.allowed_bind_roots, or {allow}"
        violation = Violation(rule=rule, service=service, value=value, allow=allow)
        if violation not in self.found:
            self.found.append(violation)

    def real(self, path: str) -> str:
        absolute = path if os.path.isabs(path) else os.path.join(self.folder, path)
        real = os.path.realpath(absolute)
        self.resolved[absolute] = real
        return real

    def touches_socket(self, real: str) -> bool:
        """True when ``real`` is a runtime socket, or a folder holding one (so a bind would expose it)."""
        for socket in self.sockets:
            if _inside(os.path.realpath(socket), real):
                return True
        try:
            st = os.stat(real)
        except OSError:
            return False
        if not stat.S_ISSOCK(st.st_mode):
            return False
        for socket in self.sockets:
            try:
                other = os.stat(socket)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                return True
        return False

    def host_path(self, service: str | None, what: str, path: str, *, outside_rule: str = "host_bind") -> None:
        """A host path that ends up mounted into a container: the socket never, else the folder or a root."""
        real = self.real(path)
        shown = path if real == path else f"{path} (resolves to {real})"
        if self.touches_socket(real):
            self.add("docker_socket", service, f"{what} {shown} exposes the container runtime's socket")
        if _inside(real, self.folder):
            return
        if any(_inside(real, os.path.realpath(root)) for root in self.policy.allowed_bind_roots):
            return
        self.add(outside_rule, service, f"{what} {shown} is outside the stack folder")

    def file(self, service: str | None, what: str, path: str, written: str | None = None) -> None:
        """A file Compose or the builder reads on the host: only inside the stack folder."""
        real = self.real(path)
        if not _inside(real, self.folder):
            shown = written or path
            shown = shown if real == shown else f"{shown} (resolves to {real})"
            self.add("outside_files", service, f"{what} {shown} is outside the stack folder")


def judge(
    model: Mapping[str, Any],
    references: Iterable[FileReference],
    policy: Policy,
    stack_name: str,
    folder: Path,
    *,
    sockets: Sequence[str] = _DEFAULT_SOCKETS,
    resolved: dict[str, str] | None = None,
) -> list[Violation]:
    """Every violation of ``policy`` in a stack: its Compose model plus the references resolved away.

    ``model`` is ``docker compose --profile '*' config --format json`` (every profile, so a service
    named on ``up`` cannot slip past); ``references`` come from :func:`gateway.policy.references.collect_references`.
    ``resolved``, when given, receives every host path judged and the real path it resolved to.
    """
    j = _Judge(stack_name, os.path.realpath(folder), policy, tuple(sockets))
    if resolved is not None:
        j.resolved = resolved
        resolved[str(folder)] = j.folder
    for ref in references:
        if not ref.paths:
            j.add("outside_files", ref.service, f"{ref.kind} {ref.value!r} {ref.problem}")
        for path in ref.paths:
            j.file(ref.service, ref.kind, str(path), ref.value)
    services = model.get("services") or {}
    for name, spec in services.items():
        if isinstance(spec, dict):
            _service(j, str(name), spec)
    _volumes(j, model.get("volumes") or {})
    _networks(j, model.get("networks") or {})
    for kind in ("secrets", "configs"):
        for key, spec in (model.get(kind) or {}).items():
            if isinstance(spec, dict) and spec.get("file"):
                j.host_path(None, f"{kind[:-1]} '{key}' file", str(spec["file"]), outside_rule="outside_files")
    return j.found


def _service(j: _Judge, name: str, spec: dict[str, Any]) -> None:
    if spec.get("privileged"):
        j.add("privileged", name, "privileged: true")
    for hook_kind in ("post_start", "pre_stop"):
        for hook in spec.get(hook_kind) or []:
            if isinstance(hook, dict) and hook.get("privileged"):
                j.add("privileged", name, f"{hook_kind} hook with privileged: true")
    for cap in spec.get("cap_add") or []:
        j.add("capabilities", name, f"cap_add {cap}")
    _namespaces(j, name, spec)
    for device in spec.get("devices") or []:
        shown = f"{device.get('source')}:{device.get('target')}" if isinstance(device, dict) else str(device)
        j.add("devices", name, f"device {shown}")
    for rule in spec.get("device_cgroup_rules") or []:
        j.add("devices", name, f"device_cgroup_rules {rule!r}")
    if spec.get("gpus"):
        j.add("devices", name, "gpus")
    reservations = ((spec.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
    if reservations.get("devices"):
        j.add("devices", name, "deploy.resources.reservations.devices")
    for option in spec.get("security_opt") or []:
        if not _SAFE_SECURITY_OPT.fullmatch(str(option)):
            j.add("security_opt", name, f"security_opt {option}")
    for source in spec.get("volumes_from") or []:
        if str(source).startswith("container:"):
            j.add("volumes_from", name, f"volumes_from {source}")
    for mount in spec.get("volumes") or []:
        if isinstance(mount, dict) and mount.get("type") == "bind" and mount.get("source"):
            j.host_path(name, "bind mount", str(mount["source"]))
    if spec.get("provider"):
        provider_type = (spec["provider"] or {}).get("type") if isinstance(spec["provider"], dict) else None
        j.add("provider", name, f"provider type {provider_type!r} runs a program on the host")
    if spec.get("cgroup_parent"):
        j.add("host_resources", name, f"cgroup_parent {spec['cgroup_parent']}")
    if spec.get("oom_kill_disable"):
        j.add("host_resources", name, "oom_kill_disable: true")
    if isinstance(spec.get("oom_score_adj"), int) and spec["oom_score_adj"] < 0:
        j.add("host_resources", name, f"oom_score_adj {spec['oom_score_adj']}")
    if isinstance(spec.get("build"), dict):
        _build(j, name, spec["build"])


def _namespaces(j: _Judge, name: str, spec: dict[str, Any]) -> None:
    mode = str(spec.get("network_mode") or "")
    if mode == "host" or mode.startswith("container:"):
        j.add("host_namespaces", name, f"network_mode {mode}")
    elif mode and mode not in ("none", "bridge", "default") and not mode.startswith("service:"):
        if not _own_name(j.stack, mode):
            j.add("external_networks", name, f"network_mode {mode} joins a network the stack did not create")
    for key in _NAMESPACE_KEYS:
        value = str(spec.get(key) or "")
        if value == "host" or value.startswith("container:"):
            j.add("host_namespaces", name, f"{key} {value}")


def _build(j: _Judge, name: str, build: dict[str, Any]) -> None:
    context = str(build.get("context") or "")
    # Compose makes a local context absolute; anything else is a remote (git, https) context.
    local = os.path.isabs(context)
    if local:
        j.file(name, "build context", context)
        if build.get("dockerfile") and not build.get("dockerfile_inline"):
            j.file(name, "Dockerfile", os.path.join(context, str(build["dockerfile"])))
    for key, value in (build.get("additional_contexts") or {}).items():
        text = str(value)
        if text.startswith("oci-layout://"):
            j.file(name, f"build additional context '{key}'", text.removeprefix("oci-layout://"))
        elif "://" not in text and not text.startswith("service:"):
            j.file(name, f"build additional context '{key}'", text)
    for key in ("cache_from", "cache_to"):
        for entry in build.get(key) or []:
            options = dict(part.split("=", 1) for part in str(entry).split(",") if "=" in part)
            if options.get("type") == "local":
                for opt in ("src", "dest"):
                    if options.get(opt):
                        j.file(name, f"build {key} {opt}", options[opt])
    for entry in build.get("ssh") or []:
        path = entry.get("path") if isinstance(entry, dict) else str(entry).partition("=")[2]
        if path:
            j.file(name, "build ssh key", str(path))
    if build.get("network") == "host":
        j.add("host_namespaces", name, "build network host")
    if build.get("privileged"):
        j.add("privileged", name, "build privileged: true")
    for entitlement in build.get("entitlements") or []:
        rule = "host_namespaces" if entitlement == "network.host" else "privileged"
        j.add(rule, name, f"build entitlement {entitlement}")


def _own_name(stack: str, name: str) -> bool:
    """True for a resource name in the stack's own namespace (``<stack>_...``, as Compose names them)."""
    return name == stack or name.startswith(f"{stack}_")


def _volumes(j: _Judge, volumes: Mapping[str, Any]) -> None:
    for key, spec in volumes.items():
        spec = spec if isinstance(spec, dict) else {}
        volume = str(spec.get("name") or f"{j.stack}_{key}")
        if spec.get("external"):
            j.add("external_volumes", None, f"volume '{key}' is external ({volume})")
        elif not _own_name(j.stack, volume):
            j.add("external_volumes", None, f"volume '{key}' is named {volume}, outside the stack's namespace")
        driver = str(spec.get("driver") or "local")
        if driver != "local":
            j.add("volume_drivers", None, f"volume '{key}' uses the driver {driver}")
            continue
        opts = {str(k): str(v) for k, v in (spec.get("driver_opts") or {}).items()}
        if "device" not in opts:
            continue
        flags = opts.get("o", "").split(",")
        if "bind" in flags or "rbind" in flags or opts.get("type") == "none":
            j.host_path(None, f"volume '{key}' binds", opts["device"])
        elif opts.get("type") != "tmpfs":
            j.add(
                "host_bind",
                None,
                f"volume '{key}' mounts {opts['device']} (type {opts.get('type', '?')}) through the host",
            )


def _networks(j: _Judge, networks: Mapping[str, Any]) -> None:
    for key, spec in networks.items():
        spec = spec if isinstance(spec, dict) else {}
        network = str(spec.get("name") or f"{j.stack}_{key}")
        if network == "host":
            j.add("host_namespaces", None, f"network '{key}' is the host's network")
        elif spec.get("external"):
            if network not in ("bridge", "none"):
                j.add("external_networks", None, f"network '{key}' is external ({network})")
        elif not _own_name(j.stack, network):
            j.add("external_networks", None, f"network '{key}' is named {network}, outside the stack's namespace")
