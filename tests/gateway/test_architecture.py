"""The gateway's seams, pinned: the folder listing is the architecture, and these tests keep it so.

- Only ``gateway/mcp/`` imports the MCP SDK; the core loads without it.
- Only ``gateway/engine/`` and ``gateway/swarm/`` talk to Docker's API (docker-py and its HTTP stack).
- The leaves (errors, models, metrics, ...) import nothing of the sub-packages, and the MCP edge
  is imported only by the command line that serves it.
- No module is longer than the house limit.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GATEWAY = REPO / "gateway"
SUB_PACKAGES = sorted(p.name for p in GATEWAY.iterdir() if (p / "__init__.py").is_file())
# docker-py: the Engine API client (its HTTP stack, requests and urllib3, is hvac's too: Vault's).
DOCKER_API = {"docker"}
MCP_SDK = {"mcp", "mcp_types"}
# Modules of the core with no gateway dependencies beyond each other: the ground every package stands on.
LEAVES = {"errors", "models", "metrics", "envparse", "backoff", "ratelimit", "stacks", "redact", "secretrefs"}
MAX_LINES = 400


@dataclass(frozen=True)
class Module:
    name: str  # dotted, e.g. gateway.engine.client
    path: Path

    @property
    def package(self) -> str:
        """The sub-package the module belongs to, or ``core`` for a module directly under gateway/."""
        parts = self.name.split(".")
        return parts[1] if len(parts) > 2 and parts[1] in SUB_PACKAGES else "core"


@cache
def modules() -> tuple[Module, ...]:
    found = []
    for path in sorted(GATEWAY.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append(Module(name, path))
    return tuple(found)


@cache
def imports_of(module: Module) -> frozenset[str]:
    """Every module ``module`` imports, absolute, including imports inside functions."""
    package = module.name.split(".") if module.path.name == "__init__.py" else module.name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(module.path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                found.update(f"{target}.{alias.name}" for alias in node.names)
                found.add(target)
            elif node.module:
                found.add(node.module)
    return frozenset(found)


def _top(name: str) -> str:
    return name.split(".")[0]


def test_every_module_is_found() -> None:
    names = {m.name for m in modules()}
    assert {"gateway.operations", "gateway.mcp.server", "gateway.engine.client", "gateway.policy.guard"} <= names
    assert {"mcp", "engine", "swarm", "policy", "deploy", "compose", "auth", "cli"} <= set(SUB_PACKAGES)


def test_only_the_mcp_package_imports_the_mcp_sdk() -> None:
    offenders = sorted(
        f"{m.name} imports {name}"
        for m in modules()
        if m.package != "mcp"
        for name in imports_of(m)
        if _top(name) in MCP_SDK
    )
    assert offenders == []


def test_only_the_engine_and_swarm_packages_talk_to_dockers_api() -> None:
    offenders = sorted(
        f"{m.name} imports {name}"
        for m in modules()
        if m.package not in ("engine", "swarm")
        for name in imports_of(m)
        if _top(name) in DOCKER_API
    )
    assert offenders == []


def test_the_leaves_import_nothing_of_the_sub_packages() -> None:
    offenders = sorted(
        f"{m.name} imports {name}"
        for m in modules()
        if m.package == "core" and m.name.split(".")[-1] in LEAVES
        for name in imports_of(m)
        if name.startswith("gateway.") and name.split(".")[1] not in LEAVES
    )
    assert offenders == []


def test_the_mcp_edge_is_imported_only_by_the_command_line() -> None:
    offenders = sorted(
        f"{m.name} imports {name}"
        for m in modules()
        if m.package not in ("mcp", "cli")
        for name in imports_of(m)
        if name.startswith("gateway.mcp")
    )
    assert offenders == []


def test_the_core_loads_without_the_mcp_sdk_or_docker() -> None:
    script = (
        "import sys\n"
        "import gateway.operations, gateway.api, gateway.catalog, gateway.reads, gateway.config, gateway.audit\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mcp', 'mcp_types', 'docker'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    # docker-py is imported on the first engine call, never at import time.
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("module", modules(), ids=lambda m: m.name)
def test_no_module_is_longer_than_the_house_limit(module: Module) -> None:
    lines = len(module.path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module.path.relative_to(REPO)} has {lines} lines; split it along a seam"
