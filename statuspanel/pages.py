"""The web UI: server-rendered pages, the dashboard fragment the page polls, and the login form."""

from __future__ import annotations

from typing import Any

import anyio
import httpx2
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.api import StackInfo

from . import __version__
from .auth import client_of
from .csrf import csrf_ok, csrf_token
from .errors import BadRequest, GatewayUnavailable, PanelError
from .sessions import LoginMethod
from .state import ACTIONS, PanelState, panel
from .validation import validate_project
from .views import stack_card, version_rows

__all__ = ["routes", "render", "pending_approvals"]


async def _watchdog_status(state: PanelState) -> dict[str, Any] | None:
    if not state.watchdog_url:
        return None
    http = state.http
    if http is None:
        return {"state": "unreachable", "reason": "the panel is starting"}
    try:
        response = await http.get(state.watchdog_url + "/status")
        data = response.json()
        if response.status_code == 200 and isinstance(data, dict):
            return data
        return {"state": "unreachable", "reason": f"status endpoint answered {response.status_code}"}
    except (httpx2.HTTPError, ValueError) as exc:
        return {"state": "unreachable", "reason": str(exc) or type(exc).__name__}


async def pending_approvals(state: PanelState) -> int:
    """How many changes wait for a person: the number on the Approvals badge (0 if unknown)."""
    try:
        return sum(1 for approval in await state.backend.approvals() if approval.status == "pending")
    except PanelError:
        return 0


async def _dashboard_context(request: Request) -> dict[str, Any]:
    state = panel(request)
    backend = state.backend
    out: dict[str, Any] = {"stacks": [], "hosts": [], "error": None, "unavailable": None}

    async def load_stacks() -> None:
        try:
            listing = await backend.list_stacks()
        except GatewayUnavailable as exc:
            out["unavailable"] = exc.message
            return
        except PanelError as exc:
            out["error"] = exc.message
            return
        cards: list[dict[str, Any]] = [{"info": info, "ps": None, "error": None} for info in listing.stacks]

        async def load_ps(card: dict[str, Any]) -> None:
            info: StackInfo = card["info"]
            try:
                # Another host's stack is asked for on its host; the local ones as always.
                card["ps"] = await (backend.ps(info.name) if info.host == "local" else backend.ps(info.name, info.host))
            except GatewayUnavailable as exc:
                out["unavailable"] = exc.message
            except PanelError as exc:
                card["error"] = exc.message

        async with anyio.create_task_group() as tg:
            for card in cards:
                tg.start_soon(load_ps, card)
        out["stacks"] = [stack_card(card["info"], card["ps"], card["error"]) for card in cards]
        if len(listing.hosts) > 1:  # grouped by host, each with its state
            out["hosts"] = [
                {**host.model_dump(), "stacks": [s for s in out["stacks"] if s["host"] == host.name]}
                for host in listing.hosts
            ]

    async def load_agent() -> None:
        out["agent"] = await backend.compose_agent_status()

    async def load_metrics() -> None:
        out["metrics"] = await backend.metrics()

    async def load_watchdog() -> None:
        out["watchdog"] = await _watchdog_status(state)

    async def load_approvals() -> None:
        out["pending_approvals"] = await pending_approvals(state)

    async with anyio.create_task_group() as tg:
        for job in (load_stacks, load_agent, load_metrics, load_watchdog, load_approvals):
            tg.start_soon(job)
    if out["agent"] == "down" and not out["unavailable"]:
        out["unavailable"] = "the compose-agent does not answer its health check"
    out["legacy"] = backend.legacy
    out["control_plane"] = backend.control_plane.value
    return out


def render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    """A page (or a page's live part) from its template, with what every page shows."""
    state = panel(request)
    base = {
        "csrf": csrf_token(request.session),
        "user": request.session.get("user") or ("local" if state.authenticator.open else None),
        "open_mode": state.authenticator.open,
        "version": __version__,
        "actions": ACTIONS,
    }
    response = state.templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    return response


async def dashboard(request: Request) -> Response:
    return render(request, "dashboard.html", await _dashboard_context(request))


async def dashboard_fragment(request: Request) -> Response:
    """The dashboard's live part, which the page fetches every few seconds and after each action."""
    return render(request, "_dashboard.html", await _dashboard_context(request))


async def _stack_context(request: Request, project: str) -> dict[str, Any]:
    """One stack: its card (as on the dashboard) and its kept versions."""
    backend = panel(request).backend
    out: dict[str, Any] = {"project": project, "stack": None, "versions": [], "versions_error": None}
    out.update(error=None, unavailable=None)
    found: dict[str, Any] = {"info": None, "ps": None, "error": None}

    async def load_info() -> None:
        try:
            listing = await backend.list_stacks()
        except PanelError as exc:
            found["error"] = exc.message
            return
        found["info"] = next((info for info in listing.stacks if info.name == project), None)

    async def load_ps() -> None:
        try:
            found["ps"] = await backend.ps(project)
        except PanelError as exc:
            found["error"] = exc.message

    async def load_versions() -> None:
        try:
            out["versions"] = version_rows(await backend.versions(project))
        except PanelError as exc:
            out["versions_error"] = exc.message

    async def load_approvals() -> None:
        out["pending_approvals"] = await pending_approvals(panel(request))

    async with anyio.create_task_group() as tg:
        for job in (load_info, load_ps, load_versions, load_approvals):
            tg.start_soon(job)
    if found["info"] is None:
        out["error"] = found["error"] or f"stack '{project}' not found"
        return out
    out["stack"] = stack_card(found["info"], found["ps"], found["error"])
    return out


async def stack_page(request: Request) -> Response:
    """A stack's page: its services, its actions, and its kept versions with a rollback button each."""
    try:
        project = validate_project(request.path_params["project"])
    except BadRequest as exc:
        return render(request, "error.html", {"message": exc.message}, status_code=400)
    context = await _stack_context(request, project)
    return render(request, "stack.html", context, status_code=404 if context["stack"] is None else 200)


async def stack_fragment(request: Request) -> Response:
    """The stack page's live part, fetched every few seconds and after each action."""
    try:
        project = validate_project(request.path_params["project"])
    except BadRequest as exc:
        return render(request, "error.html", {"message": exc.message}, status_code=400)
    return render(request, "_stack.html", await _stack_context(request, project))


async def logs_page(request: Request) -> Response:
    try:
        project = validate_project(request.path_params["project"])
    except BadRequest as exc:
        return render(request, "error.html", {"message": exc.message}, status_code=400)
    services: list[str] = []
    problem = None
    try:
        services = sorted({s.service for s in (await panel(request).backend.ps(project)).services})
    except PanelError as exc:
        problem = exc.message
    return render(request, "logs.html", {"project": project, "services": services, "problem": problem})


def _safe_next(raw: str | None) -> str:
    # Only paths on this site: "//evil.example" and "https://..." would be open redirects.
    if raw and raw.startswith("/") and not raw.startswith("//") and "\\" not in raw:
        return raw
    return "/"


async def login(request: Request) -> Response:
    state = panel(request)
    auth = state.authenticator
    next_url = _safe_next(request.query_params.get("next"))
    if auth.open or state.sessions.user(request.session):
        return RedirectResponse(next_url, status_code=303)
    context: dict[str, Any] = {"next": next_url, "error": None, "token_login": auth.token_login}
    context["password_login"] = auth.password_login
    if request.method == "GET":
        return render(request, "login.html", context)

    form = await request.form()
    token, username, password = (str(form.get(k) or "") for k in ("token", "username", "password"))
    if not csrf_ok(request.session, str(form.get("csrf") or "")):
        context["error"] = "The login form expired. Please try again."
        return render(request, "login.html", context, status_code=400)
    client = client_of(request.scope)
    login: tuple[str, LoginMethod] | None = None
    # The token is checked even when the address is limited: a token is meant to be long and random
    # (a generated one has 256 bits), so someone else's failures must not lock its holder out. A
    # password may be guessable: while limited it is refused unchecked, or the limit slowed no one.
    if token and auth.check_token(token):
        login = ("token", "token")
    else:
        wait = state.limiter.retry_after(client)
        if wait is not None:
            context["error"] = f"Too many failed logins. Try again in {wait} seconds."
            response = render(request, "login.html", context, status_code=429)
            response.headers["Retry-After"] = str(wait)
            return response
        if username and auth.check_password(username, password):
            login = (username, "password")
        elif username and (person := await auth.check_person(username, password)) is not None:
            login = (person, "person")
    if login is None:
        state.limiter.record_failure(client)
        context["error"] = "Wrong token or username and password."
        return render(request, "login.html", context, status_code=401)
    # A fresh session (and CSRF token) at login: nothing set before authentication carries over.
    state.sessions.start(request.session, *login)
    return RedirectResponse(next_url, status_code=303)


async def logout(request: Request) -> Response:
    panel(request).sessions.end(request.session)
    return RedirectResponse("/login", status_code=303)


def routes() -> list[BaseRoute]:
    return [
        Route("/", dashboard),
        Route("/ui/dashboard", dashboard_fragment),
        Route("/stacks/{project}", stack_page),
        Route("/ui/stacks/{project}", stack_fragment),
        Route("/stacks/{project}/logs", logs_page),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
