"""The status panel's Starlette app: the JSON API, the web UI and the lifespan that owns the backend."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import httpx2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from gateway.api import (
    DEFAULT_TAIL,
    MAX_TAIL,
    Action,
    FailureLimiter,
    InvalidInput,
    compile_grep,
    parse_since,
    validate_project_name,
)
from gateway.api import validate_services as check_services
from gateway.api import validate_tail as check_tail

from . import __version__
from .auth import AuthMiddleware
from .backend import Backend
from .bodylimit import MAX_BODY_BYTES, BodyLimitMiddleware
from .credentials import Authenticator
from .errors import BadRequest, NotFound, PanelError
from .headers import SecurityHeadersMiddleware
from .hosts import LOOPBACK_HOSTS, AllowedHosts, HostCheckMiddleware
from .sessions import SESSION_LIFETIME, SessionGuard

__all__ = ["create_app", "PanelState", "FEATURES", "validate_project"]

HERE = Path(__file__).parent
ACTIONS: tuple[Action, ...] = ("up", "down", "restart", "start", "stop")
# Failed logins (or wrong bearer tokens) per client address a minute. Fewer than the gateway's 30:
# behind the panel's login there may be a guessable password, not only a long random token.
LOGIN_FAILURES = 5
FEATURES = ["stacks", "ps", "logs", "actions", "metrics", "login", "csrf", "watchdog"]

_T = TypeVar("_T")


@dataclass
class PanelState:
    """What the routes share, kept on ``app.state.panel``."""

    backend: Backend
    authenticator: Authenticator
    sessions: SessionGuard
    limiter: FailureLimiter
    templates: Jinja2Templates
    watchdog_url: str | None
    http: httpx2.AsyncClient | None = None


def panel(request: Request) -> PanelState:
    return cast(PanelState, request.app.state.panel)


def person(request: Request) -> str | None:
    """Who is acting, for the gateway's audit: the logged-in user, ``local`` in open mode.

    A bearer request names no person (a script holding the panel's token), so it sends none; the
    audit line then shows the panel's token alone, as the caller.
    """
    user = request.scope.get("panel_user")
    return user if isinstance(user, str) and request.scope.get("panel_auth") != "bearer" else None


# --- validation at the edge -------------------------------------------------------------------


def _at_the_edge(check: Callable[[Any], _T], value: Any) -> _T:
    """Run one of the gateway's own validators: the same rules, answered as 400."""
    try:
        return check(value)
    except InvalidInput as exc:
        raise BadRequest(str(exc)) from None


def validate_project(project: str) -> str:
    return _at_the_edge(validate_project_name, project)


def validate_services(raw: object) -> list[str] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = [s for s in raw.split(",") if s.strip()]
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise BadRequest('"services" must be a list of service names, e.g. {"services": ["web"]}')
    return _at_the_edge(check_services, [s.strip() for s in raw])


def validate_tail(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_TAIL
    try:
        tail = int(raw)
    except ValueError:
        raise BadRequest(f"tail must be a whole number from 1 to {MAX_TAIL}, not {raw[:40]!r}") from None
    return _at_the_edge(check_tail, tail)


def validate_since(raw: str | None, *, now: float | None = None) -> str | None:
    """``since`` checked with the gateway's own grammar, and passed on as given.

    Raises:
        BadRequest: not a duration, an RFC 3339 time, or Unix seconds from 0 to a day from now.
    """
    if not raw:
        return None
    _at_the_edge(lambda value: parse_since(value, now=now), raw)
    return raw


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def validate_grep(raw: str | None) -> str | None:
    if not raw:
        return None
    _at_the_edge(compile_grep, raw)  # the gateway's own dialect and limits, checked before the call
    return raw


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        raise BadRequest('the body must be JSON, e.g. {"services": ["web"]}, or empty') from None
    if not isinstance(data, dict):
        raise BadRequest('the body must be a JSON object, e.g. {"services": ["web"]}')
    return data


# --- routes -----------------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


def api(handler: Handler) -> Handler:
    """Answer panel errors as JSON with their status code."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except PanelError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status_code)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


async def health(request: Request) -> Response:
    """Always 200: the panel is up. ``compose_agent`` says whether the gateway is."""
    status = await panel(request).backend.compose_agent_status()
    return JSONResponse({"status": "ok", "compose_agent": status, "version": __version__})


async def capabilities(request: Request) -> Response:
    backend = panel(request).backend
    return JSONResponse(
        {
            "compose_agent": not backend.legacy,
            "control_plane": backend.control_plane.value,
            "legacy_mode": backend.legacy,
            "version": __version__,
            "features": FEATURES + ([] if backend.legacy else ["mcp_proxy"]),
        }
    )


async def metrics(request: Request) -> Response:
    return JSONResponse(await panel(request).backend.metrics())


@api
async def list_stacks(request: Request) -> Response:
    result = await panel(request).backend.list_stacks()
    return JSONResponse(result.model_dump(mode="json"))


@api
async def stack_ps(request: Request) -> Response:
    project = validate_project(request.path_params["project"])
    result = await panel(request).backend.ps(project)
    return JSONResponse(result.model_dump(mode="json"))


@api
async def stack_logs(request: Request) -> Response:
    project = validate_project(request.path_params["project"])
    q = request.query_params
    unknown = sorted(set(q) - {"services", "tail", "since", "grep"})
    if unknown:
        raise BadRequest(f"unknown query parameter(s) {', '.join(unknown)}; use services, tail, since, grep")
    services = validate_services(",".join(q.getlist("services")) if "services" in q else None)
    tail, since, grep = validate_tail(q.get("tail")), validate_since(q.get("since")), validate_grep(q.get("grep"))
    # Taken before the call: a follower passing it back as `since` misses no line written meanwhile.
    asked_at = time.time()
    result = await panel(request).backend.logs(project, services=services, tail=tail, since=since, grep=grep)
    return JSONResponse(result.model_dump(mode="json"), headers={"X-Panel-Time": rfc3339(asked_at)})


@api
async def stack_action(request: Request) -> Response:
    project = validate_project(request.path_params["project"])
    action = request.path_params["action"]
    if action not in ACTIONS:
        raise NotFound(f"unknown action {action[:40]!r}; use one of: {', '.join(ACTIONS)}")
    body = await _json_body(request)
    allowed = {"volumes"} if action == "down" else {"services"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)} for {action}; allowed: {', '.join(sorted(allowed))}")
    volumes = body.get("volumes", False)
    if not isinstance(volumes, bool):
        raise BadRequest('"volumes" must be true or false')
    services = validate_services(body.get("services"))
    result = await panel(request).backend.action(
        project, cast(Action, action), services=services, volumes=volumes, on_behalf_of=person(request)
    )
    payload = result.model_dump(mode="json")
    if not result.ok:
        payload["error"] = result.message or f"{action} failed"
    return JSONResponse(payload, status_code=200 if result.ok else 502)


def _routes() -> list[BaseRoute]:
    from . import pages  # the UI's routes; imported here so pages may use this module's validators

    return [
        Route("/health", health),
        Route("/capabilities", capabilities),
        Route("/api/v1/metrics", metrics),
        Route("/api/v1/stacks", list_stacks),
        Route("/api/v1/stacks/{project}", stack_ps),
        Route("/api/v1/stacks/{project}/logs", stack_logs),
        Route("/api/v1/stacks/{project}/{action}", stack_action, methods=["POST"]),
        *pages.routes(),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]


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
        routes=_routes(),
        middleware=[
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
