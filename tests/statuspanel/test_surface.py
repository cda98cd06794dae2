"""The panel's view of the gateway is one module, ``gateway.api``: pinned here, as the watchdog's independence is."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import statuspanel

PANEL_DIR = Path(statuspanel.__file__).parent


def _gateway_imports(path: Path) -> list[str]:
    """Every module of the ``gateway`` package that ``path`` imports, other than ``gateway.api``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from gateway import api` is the same surface; `from gateway import audit` is not.
            names = [f"{node.module}.{alias.name}" if node.module == "gateway" else node.module for alias in node.names]
        else:
            continue
        found += [f"{path.name}:{node.lineno} {name}" for name in names if name.split(".")[0] == "gateway"]
    return [entry for entry in found if not entry.endswith(" gateway.api")]


def test_the_panel_imports_the_gateway_only_through_gateway_api() -> None:
    modules = sorted(PANEL_DIR.rglob("*.py"))
    assert len(modules) > 10, "the panel's modules were not found"
    offenders = [entry for path in modules for entry in _gateway_imports(path)]
    assert offenders == []


def test_importing_the_whole_panel_loads_no_gateway_module_that_gateway_api_does_not() -> None:
    # At run time too: a lazy or indirect import would show up as an extra module here.
    code = (
        "import importlib, pkgutil, sys, gateway.api, statuspanel\n"
        "surface = {m for m in sys.modules if m.split('.')[0] == 'gateway'}\n"
        "for info in pkgutil.iter_modules(statuspanel.__path__):\n"
        "    importlib.import_module('statuspanel.' + info.name)\n"
        "extra = sorted({m for m in sys.modules if m.split('.')[0] == 'gateway'} - surface)\n"
        "assert not extra, extra\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# What a panel in client mode loads of the gateway: validation, models, errors, limits, token
# sources. Legacy mode's operations load on first use only. A new module here is a decision.
CLIENT_MODE_MODULES = {
    "gateway.api",
    # The panel shows the changes that wait for a person: their model and the id's grammar.
    "gateway.approvals.records",
    "gateway.audit.context",
    "gateway.audit.digest",
    "gateway.audit.log",
    # The panel logs in the gateway's people: their document, password hashes and scopes.
    "gateway.auth.documents",
    "gateway.auth.passwords",
    "gateway.auth.people",
    "gateway.auth.principals",
    "gateway.auth.scopes",
    "gateway.auth.tokens",
    "gateway.auth.vault",
    "gateway.backoff",
    "gateway.engine.logs",
    "gateway.envparse",
    "gateway.errors",
    "gateway.metrics",
    "gateway.models",
    "gateway.ratelimit",
    # In legacy mode the panel redacts what it resolved itself; in client mode it knows nothing.
    "gateway.redact",
    "gateway.stacks",
    "gateway.statefiles",
}


def _loaded_after(code: str) -> set[str]:
    script = (
        f"import sys\n{code}\n"
        "print('\\n'.join(m for m in sys.modules if m.split('.')[0] in ('gateway', 'mcp', 'docker')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=True, timeout=60, capture_output=True, text=True)
    return set(done.stdout.split())


def test_a_panel_in_client_mode_loads_a_handful_of_gateway_modules_and_nothing_of_docker() -> None:
    code = (
        "import importlib, pkgutil, statuspanel\n"
        "for info in pkgutil.iter_modules(statuspanel.__path__):\n"
        "    importlib.import_module('statuspanel.' + info.name)\n"
    )
    loaded = _loaded_after(code)
    modules = {m for m in loaded if m.startswith("gateway.")}
    packages = {m for m in modules if (Path(statuspanel.__file__).parents[1] / m.replace(".", "/")).is_dir()}
    assert modules - packages == CLIENT_MODE_MODULES
    assert not {m for m in loaded if m.split(".")[0] == "docker"}
    # The panel is an MCP client; the gateway's MCP edge is not loaded into it.
    assert not {m for m in loaded if m.startswith("gateway.mcp")}


def test_legacy_mode_loads_the_operations_when_it_asks_for_them() -> None:
    loaded = _loaded_after("import gateway.api\ngateway.api.ComposeOperations\n")
    assert {"gateway.operations", "gateway.config", "gateway.engine.client"} <= loaded
