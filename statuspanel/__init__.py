"""status-panel: a web UI and JSON API for compose stacks, driving the compose-agent over MCP."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
