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
