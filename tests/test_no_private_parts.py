"""No package reaches into its dependencies' private parts.

A name with a leading underscore is its owner's to change in any release: the MCP SDK's
``MCPServer._lowlevel_server`` and ``ServerSession._connection``, docker-py's ``_response`` on an
events stream. Code that reads them breaks silently on an upgrade, so each has a public
replacement (see the modules that used them: gateway/mcp/resources.py, notify.py, watch.py,
watchdog/events.py). This scan keeps them from coming back:

- ``obj._name`` on anything but ``self``/``cls``, unless our own code defines ``_name``;
- the dependency-private names we have already been bitten by, on anything but ``self``/``cls``,
  even where we happen to define an attribute of the same name ourselves;
- ``getattr``/``setattr``/``hasattr`` with a literal private name, which hides the same access;
- importing a private name or module from another distribution.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gateway", "statuspanel", "watchdog")

# Private attributes of dependencies that this codebase once read. Our own classes may have attributes
# of the same name (watchdog's EventStream keeps a `_response`), which is why they are listed by name.
KNOWN_DEPENDENCY_PRIVATES = frozenset(
    {
        "_lowlevel_server",  # mcp MCPServer: use its public methods, decorators and mcp.middleware
        "_connection",  # mcp ServerSession: per-request proxy; use its public properties
        "_response",  # docker-py events stream: open GET /events through the client's session
        "_tool_manager",  # mcp MCPServer: override list_tools / call_tool instead
        "_resource_manager",  # mcp MCPServer: override list_resources / read_resource instead
        "_prompt_manager",  # mcp MCPServer: override list_prompts / get_prompt instead
        "_session",  # mcp Context: use its public request_context and session
    }
)
# Names with a leading underscore that their owner documents as public API.
DOCUMENTED_PUBLIC = frozenset(
    {
        "os._exit",  # the os module's documented exit without cleanup, e.g. for a thread blocked on stdin
    }
)
_ATTRIBUTE_FUNCTIONS = frozenset({"getattr", "setattr", "hasattr", "delattr"})


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _sources() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def _own_names(trees: list[ast.Module]) -> set[str]:
    """Every name our code defines: functions, classes, attributes it assigns, variables, parameters."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def _on_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in ("self", "cls")


def private_accesses(tree: ast.Module, own: set[str]) -> list[tuple[int, str]]:
    """(line, what) for every reach into a dependency's private parts in ``tree``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and not _on_self(node.value):
            if ast.unparse(node) in DOCUMENTED_PUBLIC:
                continue
            if node.attr in KNOWN_DEPENDENCY_PRIVATES or node.attr not in own:
                found.append((node.lineno, ast.unparse(node)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _ATTRIBUTE_FUNCTIONS
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
            and not _on_self(node.args[0])
        ):
            found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in PACKAGES or node.module == "__future__":
                continue
            if any(_is_private(part) for part in node.module.split(".")):
                found.append((node.lineno, f"from {node.module} import ..."))
            found += [(node.lineno, f"from {node.module} import {a.name}") for a in node.names if _is_private(a.name)]
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, f"import {a.name}")
                for a in node.names
                if a.name.split(".")[0] not in PACKAGES and any(_is_private(part) for part in a.name.split("."))
            ]
    return found


def test_no_package_reaches_into_a_dependencys_private_parts() -> None:
    sources = _sources()
    assert len(sources) > 30, "the packages' modules were not found"
    trees = {path: ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for path in sources}
    own = _own_names(list(trees.values()))
    offenders = [
        f"{path.relative_to(ROOT)}:{line} {what}"
        for path, tree in trees.items()
        for line, what in private_accesses(tree, own)
    ]
    assert offenders == []


@pytest.mark.parametrize(
    "source",
    [
        "mcp._lowlevel_server.add_request_handler('x', P, h)",
        "session._connection",
        "getattr(stream, '_response', None)",
        "server._tool_manager.get_tool('ps')",
        "argparse._SubParsersAction",
        "from mcp.server.mcpserver.server import _version_gated",
        "from mcp.server._streamable_http_modern import serve",
        "import mcp.server._otel",
    ],
)
def test_the_scan_finds_each_kind_of_reach(source: str) -> None:
    # `_connection` is also one of our own names here, and is still found: it is a known dependency private.
    own = {"_connection", "_response"}
    assert private_accesses(ast.parse(source), own) != []


@pytest.mark.parametrize(
    "source",
    [
        "self._peers.get(key)",
        "cls._instances",
        "peer._level",  # an attribute our own code defines
        "getattr(self, '_cache', None)",
        "from ._private import helper",
        "from gateway._internal import x",
    ],
)
def test_the_scan_leaves_our_own_private_parts_alone(source: str) -> None:
    assert private_accesses(ast.parse(source), {"_level", "_cache"}) == []
