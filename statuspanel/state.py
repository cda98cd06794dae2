"""What the panel's routes share: the backend, the auth pieces and the templates, on ``app.state.panel``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import httpx2
from starlette.requests import Request
from starlette.templating import Jinja2Templates

from gateway.api import Action, FailureLimiter

from .backend import Backend
from .credentials import Authenticator
from .sessions import SessionGuard

__all__ = ["PanelState", "panel", "person", "one_of_the_people", "ACTIONS"]

ACTIONS: tuple[Action, ...] = ("up", "down", "restart", "start", "stop")


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
    """The panel's shared state, from the app that serves ``request``."""
    return cast(PanelState, request.app.state.panel)


def person(request: Request) -> str | None:
    """Who is acting, for the gateway's audit: the logged-in user, ``local`` in open mode.

    A bearer request names no person (a script holding the panel's token), so it sends none; the
    audit line then shows the panel's token alone, as the caller.
    """
    user = request.scope.get("panel_user")
    return user if isinstance(user, str) and request.scope.get("panel_auth") != "bearer" else None


def one_of_the_people(request: Request) -> str | None:
    """The person logged in, when they logged in as one of the gateway's people.

    Only such a person may approve: the panel's token (as a bearer or through the login form), the
    configured username and open mode name nobody the gateway knows.
    """
    if request.scope.get("panel_auth") == "bearer" or request.session.get("auth") != "person":
        return None
    return person(request)
