"""The policy guard's rules and the operator's policy: the reasons a stack is refused, and who may relax them.

The guard allows only what it knows (:mod:`gateway.policy.allowlist`); each key it knows to be
dangerous is refused with one of these rule ids, and a key it does not know with ``unknown_key``.
The ids are a contract: refusals, ``config.json`` and ``docs/security.md`` name them. Only the
operator relaxes them, per stack, in ``config.json``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..approvals.records import DEFAULT_APPROVAL_TTL
from ..compose.cli import SECRET_ENV, STEERING_ENV
from ..errors import PolicyRefused
from ..models import Verdict, Violation

__all__ = [
    "RULES",
    "CONFIRMABLE_TOOLS",
    "APPROVABLE_TOOLS",
    "DEFAULT_SECRET_PATHS",
    "DEFAULT_SOCKETS",
    "Policy",
    "StackRules",
    "verdict",
    "refusal",
    "runtime_sockets",
]

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
    "unknown_key": "a key of Compose's model the guard's allowlist does not know (named by its path)",
    "network_drivers": "network drivers other than bridge and overlay, their driver options, and custom IPAM",
    "logging": "logging drivers other than json-file, local and none, and options beyond rotation",
    "registry": "images and caches from the host's loopback or link-local addresses, and remote cache backends",
    "namespace": "built images, build tags and container names outside the stack's own namespace",
    "reserved_labels": "labels under com.docker., which the engine and Compose use to tell owners apart",
    "external_secrets": "secrets and configs the stack did not create: external, or named outside its namespace",
    "compose_env": "COMPOSE_* variables in the stack's .env that steer Compose itself (bake, remote includes...)",
    "ports": "publishing a host port the operator reserved (the gateway's, the panel's)",
    "vault_paths": "Vault secrets outside the paths the operator gives the stack (policy.secret_paths)",
}
# Where a stack's x-compose-agent.secrets may point when the operator says nothing else: its own folder.
DEFAULT_SECRET_PATHS = ("secret/stacks/{stack}",)
# Tools a `policy.confirm` entry may name (the confirmation flow itself is issue 12's).
CONFIRMABLE_TOOLS = frozenset({"up", "down", "restart", "start", "stop", "deploy", "rollback"})
# Tools a `policy.approve` entry may name: they act only once a person approved the call.
APPROVABLE_TOOLS = CONFIRMABLE_TOOLS
_MIN_APPROVAL_TTL, _MAX_APPROVAL_TTL = 1.0, 7 * 24 * 3600.0

_STACK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# A key path of Compose's model, dotted, with * for any one name: services.*.annotations.
_KEY_PATTERN = re.compile(r"[A-Za-z0-9_*-]+(?:\.[A-Za-z0-9_*-]+)*")
# An engine resource name (volume, network, secret, config, container).
_RESOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A Vault KV v2 mount and a path inside it, as secret references write them; {stack} for the stack's name.
_SEGMENT = r"(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,127}|\{stack\})"
_SECRET_PATH = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{1,16}}")
# Sockets that give whoever reaches them the container runtime, hence root on the host.
DEFAULT_SOCKETS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/var/run/docker/containerd/containerd.sock",
    "/run/docker/containerd/containerd.sock",
)


class StackRules(BaseModel):
    """The operator's exceptions for one stack."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allow: tuple[str, ...] = Field(default=(), description="Rule ids this stack may break")
    allow_keys: tuple[str, ...] = Field(
        default=(),
        description="Key paths the allowlist does not know that this stack may use, unjudged (services.*.annotations)",
    )
    resources: tuple[str, ...] = Field(
        default=(),
        description="Engine volumes, networks, secrets and configs the stack may use though it did not create them",
    )
    approve: tuple[str, ...] = Field(
        default=(), description="Tools that act on this stack only once a person approved the call (adds to policy's)"
    )
    secret_paths: tuple[str, ...] = Field(
        default=(), description="More Vault paths (mount/path) this stack's secrets may come from (adds to policy's)"
    )

    @field_validator("approve")
    @classmethod
    def _approvable(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _approvable_tools(value)

    @field_validator("secret_paths")
    @classmethod
    def _secret_paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _vault_paths(value)

    @field_validator("allow_keys")
    @classmethod
    def _key_paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [key for key in value if not _KEY_PATTERN.fullmatch(key)]
        if bad:
            raise ValueError(
                f"allow_keys entries {', '.join(map(repr, bad))} are not key paths like services.*.annotations"
            )
        return value

    @field_validator("resources")
    @classmethod
    def _resource_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [name for name in value if not _RESOURCE_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"resources entries {', '.join(map(repr, bad))} are not engine resource names")
        return value

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
    reserved_ports: tuple[int, ...] = Field(
        default=(), description="Host ports no stack may publish (the gateway's and the panel's own)"
    )
    approve: tuple[str, ...] = Field(
        default=(), description="Tools that act only once a person other than the caller approved the call"
    )
    secret_paths: tuple[str, ...] = Field(
        default=DEFAULT_SECRET_PATHS,
        description="Vault paths (mount/path, {stack} for the stack's name) under which stacks' secrets may lie",
    )
    approval_ttl: float = Field(
        default=DEFAULT_APPROVAL_TTL,
        ge=_MIN_APPROVAL_TTL,
        le=_MAX_APPROVAL_TTL,
        description="Seconds an approval waits for a person, and then counts once given",
    )

    @field_validator("approve")
    @classmethod
    def _approvable(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _approvable_tools(value)

    @field_validator("secret_paths")
    @classmethod
    def _secret_paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _vault_paths(value)

    def secret_paths_of(self, stack: str) -> tuple[str, ...]:
        """The Vault paths (``mount/path``) under which ``stack``'s secret references may lie."""
        rules = self.stacks.get(stack)
        paths = self.secret_paths + (rules.secret_paths if rules is not None else ())
        return tuple(dict.fromkeys(path.replace("{stack}", stack) for path in paths))

    def needs_approval(self, tool: str, stack: str) -> bool:
        """True when ``tool`` on ``stack`` acts only once a person approved it (a stack adds to all)."""
        rules = self.stacks.get(stack)
        return tool in self.approve or (rules is not None and tool in rules.approve)

    @field_validator("reserved_ports")
    @classmethod
    def _ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [port for port in value if not 0 < port < 65536]
        if bad:
            raise ValueError(f"reserved_ports entries {bad} are not port numbers (1 to 65535)")
        return value

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

    def allowed_keys(self, stack: str) -> tuple[tuple[str, ...], ...]:
        """The key paths the operator lets ``stack`` use unjudged, split into their segments."""
        rules = self.stacks.get(stack)
        return tuple(tuple(key.split(".")) for key in rules.allow_keys) if rules is not None else ()

    def resources_of(self, stack: str) -> frozenset[str]:
        """The engine resources the operator lets ``stack`` use though it did not create them."""
        rules = self.stacks.get(stack)
        return frozenset(rules.resources) if rules is not None else frozenset()


def _vault_paths(value: tuple[str, ...]) -> tuple[str, ...]:
    bad = [path for path in value if not _SECRET_PATH.fullmatch(path)]
    if bad:
        raise ValueError(
            f"secret_paths entries {', '.join(repr(p[:80]) for p in bad)} are not Vault paths like "
            "secret/stacks/{stack}: a KV v2 mount, then a path inside it; segments of letters, digits, _ . -"
        )
    return value


def _approvable_tools(value: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [tool for tool in value if tool not in APPROVABLE_TOOLS]
    if unknown:
        known = ", ".join(sorted(APPROVABLE_TOOLS))
        raise ValueError(f"approve names unknown tool(s) {', '.join(unknown)}; known: {known}")
    return value


def runtime_sockets(docker_host: str | None) -> tuple[str, ...]:
    """The container runtime's sockets: the well-known paths plus the one ``DOCKER_HOST`` names."""
    sockets = list(DEFAULT_SOCKETS)
    if docker_host and docker_host.startswith("unix://"):
        sockets.append(docker_host.removeprefix("unix://"))
    return tuple(dict.fromkeys(sockets))


_RULE_ORDER = {rule: index for index, rule in enumerate(RULES)}


def verdict(violations: Sequence[Violation]) -> Verdict:
    """The stack-level summary of a list of violations, in the order of :data:`RULES` (stable within a rule),
    so that a verdict reads the same whatever order Compose printed the model's keys in."""
    ordered = sorted(violations, key=lambda v: _RULE_ORDER.get(v.rule, len(_RULE_ORDER)))
    return Verdict(allowed=not ordered, rules=list(dict.fromkeys(v.rule for v in ordered)), violations=ordered)


def refusal(stack: str, action: str, result: Verdict) -> PolicyRefused:
    """The error a refused call returns: every violation on its own line, and who can relax it."""
    if result.error and not result.violations:
        return PolicyRefused(f"the policy guard refuses to {action} stack '{stack}': {result.error}", [])
    lines = [
        f"the policy guard refuses to {action} stack '{stack}': its compose files break "
        f"{len(result.rules)} rule(s) ({', '.join(result.rules)})"
    ]
    lines += [f"- {violation.describe()}" for violation in result.violations]
    lines.append("Only the operator can relax the policy, in config.json; no tool argument or token changes it.")
    return PolicyRefused("\n".join(lines), list(result.violations))
