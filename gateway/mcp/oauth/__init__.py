"""The gateway as an OAuth 2.1 authorization server and resource server, on the MCP SDK's auth support.

Turned on by the gateway's public URL; see :mod:`.server` for how it is built and wired in, and
docs/oauth.md for how to run it behind HTTPS and connect clients.
"""

from __future__ import annotations

from .server import OAuthServer, build_oauth

__all__ = ["OAuthServer", "build_oauth"]
