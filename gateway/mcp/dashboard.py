"""The MCP App (``io.modelcontextprotocol/ui``): the ``ps`` tool, rendered as the panel's stack card.

A host that supports MCP Apps loads ``ui://compose-agent/stack.html`` when ``ps`` is called, hands it
the tool's result, and lets its buttons call ``restart``, ``start``, ``stop`` and ``ps`` through the
host, so every click is a tool call under the caller's own token and scopes. Hosts without Apps
ignore the link and show the usual text and structured result.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID, Apps, ResourceCsp

__all__ = ["APP_URI", "APP_MIME_TYPE", "EXTENSION_ID", "stack_app", "stack_app_html", "PS_TOOL_META"]

APP_URI = "ui://compose-agent/stack.html"
# Merged into the ps tool's _meta: the link a host follows to render the result.
PS_TOOL_META: dict[str, Any] = {"ui": {"resourceUri": APP_URI}}


def stack_app_html() -> str:
    """The app's single self-contained HTML document."""
    return resources.files("gateway.mcp").joinpath("ui/stack.html").read_text(encoding="utf-8")


def stack_app() -> Apps:
    """The Apps extension serving the stack view; pass it to ``MCPServer(extensions=[...])``."""
    apps = Apps()
    apps.add_html_resource(
        APP_URI,
        stack_app_html(),
        name="stack_view",
        title="Stack view",
        description=(
            "Interactive view of one stack for hosts that support MCP Apps: services, state, health and "
            "uptime, with restart, start and stop buttons that call the tools through the host."
        ),
        # Nothing to fetch: the page is self-contained and talks only to the host.
        csp=ResourceCsp(connect_domains=[], resource_domains=[]),
        prefers_border=True,
    )
    return apps
