"""Who may use the panel: a bearer token for the API, a login session for the browser, CSRF on writes.

The pieces live by noun: :mod:`.credentials` (what is accepted), :mod:`.sessions` (whether a login
still counts), :mod:`.csrf` and :mod:`.hosts`. This module puts them together in front of the routes.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any
from urllib.parse import quote

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api import FailureLimiter, client_key

from .credentials import Authenticator
from .csrf import CSRF_HEADER, csrf_ok
from .hosts import AllowedHosts, origin_allowed
from .sessions import SessionGuard

__all__ = ["AuthMiddleware", "PUBLIC_PATHS", "client_of"]

# Answer without any credentials: probes, the login form, and the assets the login page needs.
PUBLIC_PATHS = frozenset({"/health", "/capabilities", "/api/v1/metrics", "/login"})
PUBLIC_PREFIXES = ("/static/",)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def client_of(scope: Scope) -> str:
    """Whom failures are counted against: the peer uvicorn reports (it follows ``X-Forwarded-For``
    only from ``--forwarded-allow-ips``), as the gateway counts them (an IPv6 address by its /64)."""
    client = scope.get("client")
    return client_key(client[0] if client else None)


class AuthMiddleware:
    """Lets a request through only with a valid bearer token or login session (or in open mode).

    - Public paths answer to anyone.
    - API paths without credentials get 401 JSON; pages get a redirect to ``/login``.
    - A wrong bearer token counts as a failed login of the client's address; once the limiter
      says so, further failures get 429 with ``Retry-After``. A valid token is never refused.
    - Unsafe methods authenticated by the session cookie must carry the session's CSRF token in
      the ``X-CSRF-Token`` header. A bearer token is never sent by a browser on its own, so
      bearer requests need none.

    Sits inside ``SessionMiddleware`` so ``scope["session"]`` is set. Sets ``scope["panel_user"]``
    to who is acting: the session's user (a username, or ``token`` after a token login), ``local``
    in open mode, ``token`` for a bearer request, which is also marked ``scope["panel_auth"] = "bearer"``.
    """

    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator,
        allowed_hosts: AllowedHosts,
        sessions: SessionGuard,
        limiter: FailureLimiter,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.allowed_hosts = allowed_hosts
        self.sessions = sessions
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        session: MutableMapping[str, Any] = scope.get("session", {})
        # First, on every path: a stale login is cleared, so the pages (login included) never see one.
        session_user = self.sessions.user(session)
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        method: str = scope["method"]
        api = path.startswith("/api/")

        authorization = headers.get("authorization")
        if self.authenticator.check_bearer(authorization):
            scope["panel_user"] = "token"
            scope["panel_auth"] = "bearer"
            await self.app(scope, receive, send)
            return

        user = session_user
        if not user and self.authenticator.open:
            user = "local"
        if not user:
            response: Response
            if authorization is not None:
                response = self._wrong_credential(client_of(scope))
            elif api:
                response = JSONResponse(
                    {"error": "authentication required: send 'Authorization: Bearer <status panel token>' or log in"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="status-panel"'},
                )
            else:
                target = path + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
                response = RedirectResponse("/login?next=" + quote(target, safe=""), status_code=303)
            await response(scope, receive, send)
            return

        if method not in _SAFE_METHODS:
            # A cookie rides along on any request the browser makes, so the session alone proves nothing.
            if not origin_allowed(headers, self.allowed_hosts) or not csrf_ok(session, headers.get(CSRF_HEADER)):
                if session_user or headers.get("origin") is not None or headers.get("cookie"):
                    response = JSONResponse(
                        {"error": "missing or wrong CSRF token: reload the page and try again"}, status_code=403
                    )
                    await response(scope, receive, send)
                    return
        scope["panel_user"] = user
        await self.app(scope, receive, send)

    def _wrong_credential(self, client: str) -> Response:
        wait = self.limiter.retry_after(client)
        if wait is not None:
            return JSONResponse(
                {"error": f"too many failed attempts from {client}; retry in {wait} s with a valid token"},
                status_code=429,
                headers={"Retry-After": str(wait)},
            )
        self.limiter.record_failure(client)
        return JSONResponse(
            {"error": "wrong token: send 'Authorization: Bearer <status panel token>'"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="status-panel", error="invalid_token"'},
        )
