"""The status panel's Starlette app: the JSON API, the web UI, their middleware and the lifespan."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from gateway.api import FailureLimiter

from . import approvals, pages, routes
from .auth import AuthMiddleware
from .backend import Backend
from .bodylimit import MAX_BODY_BYTES, BodyLimitMiddleware
from .credentials import Authenticator
from .headers import SecurityHeadersMiddleware
from .hosts import LOOPBACK_HOSTS, AllowedHosts, HostCheckMiddleware
from .redaction import RedactingMiddleware
from .sessions import SESSION_LIFETIME, SessionGuard
from .state import PanelState

__all__ = ["create_app"]

HERE = Path(__file__).parent
# Failed logins (or wrong bearer tokens) per client address a minute. Fewer than the gateway's 30:
# behind the panel's login there may be a guessable password, not only a long random token.
LOGIN_FAILURES = 5


def create_app(
    backend: Backend,
    authenticator: Authenticator,
    *,
    watchdog_url: str | None = None,
    session_secret: str | None = None,
    limiter: FailureLimiter | None = None,
    https_only: bool = False,
    allowed_hosts: AllowedHosts | Iterable[str] = LOOPBACK_HOSTS,
    background: Sequence[Callable[[], Coroutine[Any, Any, None]]] = (),
    clock: Callable[[], float] = time.time,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Starlette:
    """Build the panel. ``session_secret`` signs the login cookie; without one it is generated per process.

    ``allowed_hosts`` are the names the panel answers to (``Host``, and ``Origin`` on POSTs); the
    default suits a panel on a loopback address. ``background`` tasks (the token refresh) run for
    the app's lifetime. ``clock`` is the wall clock that login lifetimes are measured with. A body
    over ``max_body_bytes`` is answered 413. ``limiter`` counts failed logins and wrong bearer
    tokens per client address.

    Raises:
        ValueError: ``allowed_hosts`` holds something that is not a host name.
    """
    hosts = allowed_hosts if isinstance(allowed_hosts, AllowedHosts) else AllowedHosts(allowed_hosts)
    secret = session_secret or secrets.token_urlsafe(32)
    sessions = SessionGuard(authenticator, secret, lifetime=SESSION_LIFETIME, clock=clock)
    templates = Jinja2Templates(directory=HERE / "templates")
    state = PanelState(
        backend=backend,
        authenticator=authenticator,
        sessions=sessions,
        limiter=limiter if limiter is not None else FailureLimiter(limit=LOGIN_FAILURES, window=60.0),
        templates=templates,
        watchdog_url=watchdog_url.rstrip("/") if watchdog_url else None,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx2.AsyncClient(timeout=1.5) as http, backend.lifespan(), anyio.create_task_group() as tg:
            for task in background:
                tg.start_soon(task)
            state.http = http
            try:
                yield
            finally:
                state.http = None
                tg.cancel_scope.cancel()

    app = Starlette(
        routes=[
            *routes.routes(),
            *pages.routes(),
            *approvals.routes(),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[
            # Outermost: whatever any route or middleware answers, no secret known here leaves (legacy mode).
            Middleware(RedactingMiddleware),
            Middleware(SecurityHeadersMiddleware),
            Middleware(HostCheckMiddleware, allowed=hosts),
            Middleware(BodyLimitMiddleware, max_bytes=max_body_bytes),
            Middleware(
                SessionMiddleware,
                secret_key=secret,
                session_cookie="status_panel_session",
                same_site="strict",
                https_only=https_only,
                max_age=SESSION_LIFETIME,
            ),
            Middleware(
                AuthMiddleware,
                authenticator=authenticator,
                allowed_hosts=hosts,
                sessions=sessions,
                limiter=state.limiter,
            ),
        ],
        lifespan=lifespan,
    )
    app.state.panel = state
    return app
