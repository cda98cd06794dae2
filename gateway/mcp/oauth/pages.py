"""The login page and the consent page a client sends a person's browser to; plain forms, no JavaScript.

``/authorize`` (the SDK's handler) checks the client's request and the provider parks it; the
browser arrives at ``GET /oauth/login?request=<id>``. Then:

1. the login form (``username``, ``password``) is checked against the people; failures are limited
   per client address like the panel's (5 a minute), and a limited address is refused before any
   password is checked. Bearer tokens never pass here, so no failure can throttle one.
2. the consent page names the client, where it returns, and the scopes it would get: those it
   asked for that the person holds. **Allow** sends the browser back to the client's registered
   redirect URI with a code, **Deny** with ``error=access_denied``; both carry ``iss`` (RFC 9207).

Every form carries a CSRF token of its request, the request is bound to the browser that first
opened it (a cookie), a cross-site ``Origin`` is refused, and the pages may not be framed. No
address a form names is ever redirected to: the only way out is the redirect URI the client
registered, as checked by ``/authorize``.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from mcp.server.auth.provider import construct_redirect_uri
from mcp.server.transport_security import RequestBodyLimitMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route, request_response

from ... import __version__
from ...auth.scopes import ScopeSet, describe, granted_scopes, parse_scope
from ...ratelimit import FailureLimiter, client_key
from .clients import is_metadata_url
from .grants import digest
from .pending import Pending
from .provider import CONSENT_PATH, LOGIN_PATH, GatewayAuthorization

__all__ = ["LoginPages", "LOGIN_FAILURES", "COOKIE"]

logger = logging.getLogger(__name__)

LOGIN_FAILURES = 5
COOKIE = "compose_agent_oauth"
_MAX_FORM = 16 * 1024
_TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class _Form:
    request_id: str
    csrf: str
    fields: dict[str, str]


class LoginPages:
    """The two pages and their form handlers, as Starlette routes (see :meth:`routes`)."""

    def __init__(
        self, provider: GatewayAuthorization, *, limiter: FailureLimiter | None = None, secure_cookie: bool = False
    ) -> None:
        self.provider = provider
        self.limiter = limiter or FailureLimiter(limit=LOGIN_FAILURES, window=60.0)
        self.secure_cookie = secure_cookie
        self.origin = "{0.scheme}://{0.netloc}".format(urlsplit(provider.issuer))
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
        )

    def routes(self) -> list[BaseRoute]:
        # A form here is a few hundred bytes: anything much larger is refused before it is parsed.
        return [
            Route(
                LOGIN_PATH, RequestBodyLimitMiddleware(request_response(self.login), _MAX_FORM), methods=["GET", "POST"]
            ),
            Route(
                CONSENT_PATH,
                RequestBodyLimitMiddleware(request_response(self.consent), _MAX_FORM),
                methods=["GET", "POST"],
            ),
        ]

    # -- rendering ----------------------------------------------------------------------------------

    def _page(
        self, name: str, context: dict[str, Any], *, status: int = 200, redirect_origin: str | None = None
    ) -> Response:
        base = {"version": __version__, "issuer_host": urlsplit(self.provider.issuer).netloc}
        html = self.env.get_template(name).render(**base, **context)
        return self._secured(Response(html, status_code=status, media_type="text/html"), redirect_origin)

    def _secured(self, response: Response, redirect_origin: str | None = None) -> Response:
        # Forms post here, and a browser applies form-action to the redirect that follows them too.
        form_action = "'self'" + (f" {redirect_origin}" if redirect_origin else "")
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'self'; img-src 'self'; "
            f"form-action {form_action}; base-uri 'none'; frame-ancestors 'none'"
        )
        response.headers["X-Frame-Options"] = "DENY"  # the consent buttons must never be clickjacked
        response.headers["X-Content-Type-Options"] = "nosniff"
        # Not "no-referrer": a browser then sends "Origin: null" with the forms, and that is refused.
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
        return response

    def _problem(self, message: str, status: int = 400) -> Response:
        return self._page("message.html", {"title": "Cannot continue", "message": message}, status=status)

    # -- the request a form belongs to ---------------------------------------------------------------

    async def _form(self, request: Request) -> _Form | Response:
        """The posted form, if it may be acted on: same origin, and of a form we rendered."""
        origin = request.headers.get("origin")
        if origin is not None and origin != self.origin:
            return self._problem("This form was sent from another site, so it was ignored.", 403)
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return _Form(fields.get("request", ""), fields.get("csrf", ""), fields)

    def _open(self, request: Request, request_id: str, stage: str, form: _Form | None = None) -> Pending | Response:
        pending = self.provider.pending.get(request_id)
        if pending is None:
            return self._problem("This sign-in request is unknown or has expired.")
        if not pending.bound_to(request.cookies.get(COOKIE)):
            return self._problem("This sign-in request was opened in another browser.", 403)
        if form is not None and not pending.csrf_ok(form.csrf):
            return self._problem("This form has expired. Go back to your app and connect again.", 403)
        if pending.stage != stage:
            return self._problem("This step of the sign-in is already done.", 409)
        return pending

    def _back_to_client(self, pending: Pending, **params: str | None) -> Response:
        """The browser back to the client's registered redirect URI (the only place it is ever sent)."""
        self.provider.pending.close(pending.id)
        url = construct_redirect_uri(pending.redirect_uri, state=pending.state, iss=self.provider.issuer, **params)
        return self._secured(RedirectResponse(url, status_code=303), _origin_of(pending.redirect_uri))

    # -- login ----------------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self._login_page(request)
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        pending = self._open(request, form.request_id, "login", form)
        if isinstance(pending, Response):
            return pending
        if "cancel" in form.fields:
            return self._back_to_client(pending, error="access_denied", error_description="the person cancelled")
        client = client_key(request.client.host if request.client else None)
        context = self._login_context(pending, form.fields.get("username", "")[:64])
        # A password may be guessable: while limited, none is checked, right or wrong.
        wait = self.limiter.retry_after(client)
        if wait is not None:
            context["error"] = f"Too many failed sign-ins from your address. Try again in {wait} seconds."
            response = self._page("login.html", context, status=429, redirect_origin=_origin_of(pending.redirect_uri))
            response.headers["Retry-After"] = str(wait)
            return response
        username, password = form.fields.get("username", ""), form.fields.get("password", "")
        person = await self.provider.people.authenticate(username, password)
        if person is None:
            self.limiter.record_failure(client)
            logger.info("OAuth: failed sign-in from %s for client %s", client, pending.client_id)
            context["error"] = "Wrong username or password."
            return self._page("login.html", context, status=401, redirect_origin=_origin_of(pending.redirect_uri))
        pending.next_step("consent", person.name)
        return self._secured(RedirectResponse(f"{CONSENT_PATH}?request={pending.id}", status_code=303))

    def _login_page(self, request: Request) -> Response:
        pending = self.provider.pending.get(request.query_params.get("request"))
        if pending is None:
            return self._problem("This sign-in request is unknown or has expired.")
        cookie = request.cookies.get(COOKIE)
        new_cookie = None
        if pending.browser is None:
            if not cookie or len(cookie) > 100:
                cookie = new_cookie = secrets.token_urlsafe(32)
            pending.browser = digest(cookie)
        elif not pending.bound_to(cookie):
            return self._problem("This sign-in request was opened in another browser.", 403)
        if pending.stage != "login":
            return self._secured(RedirectResponse(f"{CONSENT_PATH}?request={pending.id}", status_code=303))
        response = self._page(
            "login.html", self._login_context(pending, ""), redirect_origin=_origin_of(pending.redirect_uri)
        )
        if new_cookie is not None:
            response.set_cookie(
                COOKIE, new_cookie, path="/oauth", httponly=True, samesite="lax", secure=self.secure_cookie
            )
        return response

    def _login_context(self, pending: Pending, username: str) -> dict[str, Any]:
        return {
            "request_id": pending.id,
            "csrf": pending.csrf,
            "client_name": _client_label(pending),
            "username": username,
            "error": None,
        }

    # -- consent --------------------------------------------------------------------------------------

    async def consent(self, request: Request) -> Response:
        if request.method == "GET":
            pending = self._open(request, request.query_params.get("request", ""), "consent")
            if isinstance(pending, Response):
                return pending
            return self._consent_page(pending)
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        pending = self._open(request, form.request_id, "consent", form)
        if isinstance(pending, Response):
            return pending
        granted = self._granted(pending)
        if granted is None:
            self.provider.pending.close(pending.id)
            return self._problem("You can no longer sign in here: ask the operator.", 403)
        if form.fields.get("decision") != "allow":
            logger.info("OAuth: %s denied client %s", pending.person, pending.client_id)
            return self._back_to_client(pending, error="access_denied", error_description="the person denied access")
        if not granted:
            return self._back_to_client(
                pending, error="access_denied", error_description="the person holds none of the scopes asked for"
            )
        assert pending.person is not None  # set when the login succeeded, the only way to this stage
        code = await self.provider.issue_code(pending, pending.person, granted)
        return self._back_to_client(pending, code=code)

    def _granted(self, pending: Pending) -> ScopeSet | None:
        """The scopes the client asked for that the person holds now; None when the person is gone."""
        person = self.provider.people.get(pending.person or "")
        if person is None:
            return None
        return granted_scopes(pending.scopes, person.scopes)

    def _consent_page(self, pending: Pending) -> Response:
        granted = self._granted(pending)
        if granted is None:
            self.provider.pending.close(pending.id)
            return self._problem("You can no longer sign in here: ask the operator.", 403)
        asked = [parse_scope(s) for s in pending.scopes] if pending.scopes is not None else list(granted)
        withheld = [str(a) for a in asked if not any(a.meet(g) is not None and g.verb == a.verb for g in granted)]
        context = {
            "request_id": pending.id,
            "csrf": pending.csrf,
            "person": pending.person,
            "client_name": _client_label(pending),
            "client_note": _client_note(pending),
            "redirect_host": _host_of(pending.redirect_uri),
            "granted": [{"name": str(s), "what": describe(s)} for s in granted],
            "withheld": withheld,
        }
        return self._page("consent.html", context, redirect_origin=_origin_of(pending.redirect_uri))


def _client_label(pending: Pending) -> str:
    if is_metadata_url(pending.client_id):
        return pending.client_name or urlsplit(pending.client_id).netloc
    return pending.client_name or "An unnamed app"


def _client_note(pending: Pending) -> str:
    if is_metadata_url(pending.client_id):
        return f"Identified by {pending.client_id}"
    # A registered client chose its own name: say so, so that a name alone is not trusted.
    return f"A registered app (it named itself); client ID {pending.client_id}"


def _host_of(uri: str) -> str:
    parts = urlsplit(uri)
    return parts.netloc or f"{parts.scheme}:"


def _origin_of(uri: str) -> str:
    """The CSP source for ``uri``'s origin (``https://host:port``, or ``scheme:`` for an app's own scheme)."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and parts.netloc:
        return f"{parts.scheme}://{parts.netloc}"
    return f"{parts.scheme}:"
