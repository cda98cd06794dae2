"""The panel's settings, read once at its entry point: its own model, with no environment fallbacks.

The fields the panel shares with the gateway (the seed's switches, trusted proxies, where tokens
come from) are the gateway's own, with the same checks; the rest are the panel's. In legacy mode
the panel also reads the gateway's settings, to run the operations itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from gateway.api import TOKEN_SOURCE_ENV, CommonFields, gather, settle

__all__ = ["PanelSettings", "load_panel_settings", "ALLOWED_HOSTS_ENV", "HTTPS_ONLY_ENV"]

ALLOWED_HOSTS_ENV = "STATUS_PANEL_ALLOWED_HOSTS"
HTTPS_ONLY_ENV = "STATUS_PANEL_HTTPS_ONLY"


class PanelSettings(CommonFields):
    """Everything the status panel needs to know."""

    compose_agent_url: str = "http://127.0.0.1:8765/mcp"
    watchdog_url: str | None = None
    panel_username: str | None = None
    panel_password: str | None = Field(default=None, repr=False)
    session_secret: str | None = Field(default=None, repr=False)
    allowed_hosts: str | None = Field(
        default=None, description="Host headers to answer (comma-separated); default: by the listen address"
    )
    https_only: bool = Field(default=False, description="Mark the session cookie Secure (served over HTTPS)")


# env var -> field. Only these are read; everything else in the environment is ignored.
_ENV_FIELDS: dict[str, str] = {
    **TOKEN_SOURCE_ENV,
    "COMPOSE_AGENT_ENABLED": "compose_agent_enabled",
    "CONTROL_PLANE": "control_plane",
    "COMPOSE_AGENT_URL": "compose_agent_url",
    "WATCHDOG_URL": "watchdog_url",
    "STATUS_PANEL_USERNAME": "panel_username",
    "STATUS_PANEL_PASSWORD": "panel_password",
    "STATUS_PANEL_SESSION_SECRET": "session_secret",
    ALLOWED_HOSTS_ENV: "allowed_hosts",
    HTTPS_ONLY_ENV: "https_only",
}
# config.json is the gateway's too: the panel reads its two switches and leaves the rest to it.
_FILE_FIELDS = ("compose_agent_enabled", "control_plane")


def load_panel_settings(environ: Mapping[str, str], **overrides: Any) -> PanelSettings:
    """:class:`PanelSettings` from ``config.json`` (``CONFIG_PATH``), the environment, then ``overrides``.

    ``overrides`` are command-line flags; ``None`` ones are ignored.

    Raises:
        GatewayError: a malformed file or value, naming where it came from.
    """
    values, origin = gather(
        environ,
        _ENV_FIELDS,
        file_fields=_FILE_FIELDS,
        bools={"compose_agent_enabled", "https_only"},
        strict_file=False,
    )
    return settle(PanelSettings, values, origin, overrides)
