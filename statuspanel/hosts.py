"""Which names the panel answers to: the ``Host`` check against DNS rebinding, and the ``Origin`` check.

A page whose domain was rebound to 127.0.0.1 is same-origin with the panel, so its requests carry its
own name in ``Host``. Only names the operator allows get an answer at all.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["AllowedHosts", "HostCheckMiddleware", "LOOPBACK_HOSTS", "split_host", "origin_allowed"]

logger = logging.getLogger(__name__)

# What the panel answers to by default on a loopback address. Any other name in Host may be a
# DNS-rebinding page: a site whose name now resolves to 127.0.0.1, and so same-origin with the panel.
LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
_HOST_RE = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::(?P<port>[0-9]{1,5}))?")


def split_host(value: str | None) -> tuple[str, str | None] | None:
    """A ``Host`` header or an origin's netloc as ``(host, port)``; None when malformed.

    The host is lowercased, and an IPv6 literal loses its brackets and takes its short form, so
    ``[0:0::1]:5001`` gives ``("::1", "5001")``. (Starlette's ``TrustedHostMiddleware`` keeps the
    brackets, so an allowed ``::1`` would never match there.)
    """
    if not value:
        return None
    match = _HOST_RE.fullmatch(value)
    if match is None:
        return None
    if match["ipv6"] is not None:
        try:
            host = ipaddress.IPv6Address(match["ipv6"]).compressed
        except ValueError:
            return None
    else:
        host = match["name"].lower()
    return host, match["port"]


class AllowedHosts:
    """The host names the panel answers to, compared without the port; ``*`` allows any.

    Raises:
        ValueError: an entry is not a bare host name or address (a scheme, a port, a path), or
            there is no entry at all.
    """

    def __init__(self, hosts: Iterable[str]) -> None:
        names: set[str] = set()
        self.any = False
        for raw in hosts:
            entry = raw.strip()
            if not entry:
                continue
            if entry == "*":
                self.any = True
                continue
            # A bare IPv6 address (::1) has colons that would read as a port.
            parsed = split_host(f"[{entry}]" if ":" in entry and not entry.startswith("[") else entry)
            if parsed is None or parsed[1] is not None:
                raise ValueError(
                    f"{entry[:80]!r} is not a host name: list names or addresses without scheme or port, "
                    "e.g. 127.0.0.1,localhost,::1,panel.example (or * for any)"
                )
            names.add(parsed[0])
        if not names and not self.any:
            raise ValueError("no allowed hosts: list at least one name, or * for any")
        self.names = frozenset(names)

    @classmethod
    def parse(cls, raw: str) -> AllowedHosts:
        """From a comma-separated list, e.g. ``"127.0.0.1,localhost,::1"``."""
        return cls(raw.split(","))

    def allows(self, host: str) -> bool:
        """True when ``host`` (lowercased, IPv6 without brackets) is one of the names, or any is allowed."""
        return self.any or host in self.names

    def __str__(self) -> str:
        return "*" if self.any else ", ".join(sorted(self.names))


class HostCheckMiddleware:
    """Answers 400 to a request whose ``Host`` is not an allowed host, before anything else runs."""

    def __init__(self, app: ASGIApp, allowed: AllowedHosts) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allowed.any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        value = Headers(scope=scope).get("host")
        parsed = split_host(value)
        if parsed is not None and self.allowed.allows(parsed[0]):
            await self.app(scope, receive, send)
            return
        shown = repr(value[:100]) if value is not None else "(none)"
        message = (
            f"Host header {shown} is not allowed: this panel answers to {self.allowed}. "
            "To reach it by another name, add that name to STATUS_PANEL_ALLOWED_HOSTS."
        )
        logger.warning("refused a request for host %s", shown)
        response: Response
        if str(scope.get("path", "")).startswith("/api/"):
            response = JSONResponse({"error": message}, status_code=400)
        else:
            response = PlainTextResponse(message, status_code=400)
        await response(scope, receive, send)


def origin_allowed(headers: Headers, allowed: AllowedHosts) -> bool:
    """False when a browser says the request comes from a site the panel does not answer to.

    ``Host`` is no proof (a DNS-rebinding page sends its own name), so the origin must be an allowed
    host. Only when any host is allowed is ``Host`` the reference: the origin must then be the
    panel's own (same host and port).
    """
    origin = headers.get("origin")
    if origin is None:
        return True
    parts = urlsplit(origin)  # "null" (a sandboxed or file: page) has no scheme and fails here
    if parts.scheme not in ("http", "https"):
        return False
    source = split_host(parts.netloc)
    if source is None:
        return False
    if allowed.any:
        return source == split_host(headers.get("host"))
    return allowed.allows(source[0])
