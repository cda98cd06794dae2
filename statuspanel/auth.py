"""Who may use the panel: bearer tokens for the API, login sessions for the browser, CSRF, login limits.

The session itself is Starlette's ``SessionMiddleware`` (a cookie signed with itsdangerous). This
module decides what a request may do given its ``Authorization`` header and that session.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "AllowedHosts",
    "HostCheckMiddleware",
    "LOOPBACK_HOSTS",
    "split_host",
    "Authenticator",
    "SessionGuard",
    "SESSION_LIFETIME",
    "LoginMethod",
    "LoginRateLimiter",
    "AuthMiddleware",
    "csrf_token",
    "csrf_ok",
    "PUBLIC_PATHS",
    "CSRF_HEADER",
]

logger = logging.getLogger(__name__)

# Answer without any credentials: probes, the login form, and the assets the login page needs.
PUBLIC_PATHS = frozenset({"/health", "/capabilities", "/api/v1/metrics", "/login"})
PUBLIC_PREFIXES = ("/static/",)
CSRF_HEADER = "x-csrf-token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A login counts for this long from the moment it happened, however often the cookie is re-signed.
SESSION_LIFETIME = 12 * 60 * 60
# A session stamped a little in the future is one from before the clock was set back, not a forgery.
_CLOCK_SLACK = 300

LoginMethod = Literal["token", "password"]


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


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class Authenticator:
    """Checks credentials: the panel token, and an optional username and password from config.

    With neither configured the panel is *open*: every request counts as authenticated. The entry
    point allows that only on a loopback address.
    """

    def __init__(self, token: str | None = None, username: str | None = None, password: str | None = None) -> None:
        self._token = token or None
        self._username = username or None
        self._password = password or None

    def set_token(self, token: str | None) -> None:
        """Accept a rotated panel token (and refuse the old one) from now on."""
        self._token = token or None

    @property
    def open(self) -> bool:
        return self._token is None and not self.password_login

    @property
    def password_login(self) -> bool:
        return self._username is not None and self._password is not None

    @property
    def token_login(self) -> bool:
        return self._token is not None

    def check_token(self, candidate: str) -> bool:
        if self._token is None or not candidate:
            return False
        return _same(candidate, self._token)

    def check_bearer(self, authorization: str | None) -> bool:
        """True for ``Authorization: Bearer <panel token>``."""
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        return scheme.lower() == "bearer" and self.check_token(value.strip())

    def check_password(self, username: str, password: str) -> bool:
        if self._username is None or self._password is None:
            return False
        # Both compared every time, so the timing says nothing about which one was wrong.
        user_ok = _same(username, self._username)
        pass_ok = _same(password, self._password)
        return user_ok and pass_ok

    def fingerprint(self, method: str, user: str, key: bytes) -> str | None:
        """An HMAC of the credential a session logged in with, as configured now; None if it is gone.

        The credential itself never goes into the cookie: itsdangerous signs it, but does not
        encrypt it.
        """
        material: list[str]
        if method == "token":
            if self._token is None:
                return None
            material = ["token", self._token]
        elif method == "password":
            if self._username is None or self._password is None or not _same(user, self._username):
                return None
            material = ["password", self._username, self._password]
        else:
            return None
        return hmac.new(key, json.dumps(material).encode(), hashlib.sha256).hexdigest()


class SessionGuard:
    """Login sessions bound to the credential that opened them, for a fixed time from login.

    The session (a signed cookie) holds the user, how they logged in, an HMAC of that credential,
    the login time and a random id. It stops counting when:

    - the credential is no longer the configured one (a rotated token, a changed password);
    - ``lifetime`` seconds have passed since login (Starlette's ``max_age`` restarts with every
      response, so on its own a busy tab would stay logged in for ever);
    - it was logged out: its id is remembered, in this process, until its lifetime would have
      ended, so a copy of the cookie is refused too.

    The HMAC key is derived from the session secret, so with ``STATUS_PANEL_SESSION_SECRET`` set,
    sessions survive a restart as long as their credential is unchanged.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        secret: str,
        *,
        lifetime: float = SESSION_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.authenticator = authenticator
        self.lifetime = lifetime
        self.clock = clock  # wall time: login times in cookies outlive the process
        self._key = hmac.new(secret.encode(), b"status-panel session credential fingerprint", hashlib.sha256).digest()
        self._lock = threading.Lock()
        self._ended: dict[str, float] = {}  # session id -> when it would have expired anyway

    def start(self, session: MutableMapping[str, Any], user: str, method: LoginMethod) -> None:
        """Replace ``session`` with a fresh login (and a fresh CSRF token) for ``user``."""
        fingerprint = self.authenticator.fingerprint(method, user, self._key)
        if fingerprint is None:
            raise ValueError(f"no {method} credential is configured for this login")
        session.clear()
        session.update(
            {
                "user": user,
                "auth": method,
                "fp": fingerprint,
                "iat": int(self.clock()),
                "sid": secrets.token_urlsafe(16),
                "csrf": secrets.token_urlsafe(32),
            }
        )

    def user(self, session: MutableMapping[str, Any]) -> str | None:
        """The session's user if its login still counts; a login that does not is cleared away."""
        if "user" not in session:
            return None
        user = self._valid_user(session)
        if user is None:
            session.clear()
        return user

    def _valid_user(self, session: MutableMapping[str, Any]) -> str | None:
        user, method, fingerprint = session.get("user"), session.get("auth"), session.get("fp")
        issued, sid = session.get("iat"), session.get("sid")
        if not (
            isinstance(user, str)
            and isinstance(method, str)
            and isinstance(fingerprint, str)
            and isinstance(issued, int)
            and isinstance(sid, str)
        ):
            return None  # also every session from before sessions were bound to a credential
        now = self.clock()
        if not issued - _CLOCK_SLACK <= now < issued + self.lifetime:
            return None
        with self._lock:
            if sid in self._ended:
                return None
        expected = self.authenticator.fingerprint(method, user, self._key)
        if expected is None or not _same(fingerprint, expected):
            return None
        return user

    def end(self, session: MutableMapping[str, Any]) -> None:
        """Log out: clear ``session``, and refuse any copy of it from now on."""
        sid, issued = session.get("sid"), session.get("iat")
        if isinstance(sid, str) and isinstance(issued, int):
            now = self.clock()
            with self._lock:
                self._ended = {k: until for k, until in self._ended.items() if until > now}
                self._ended[sid] = issued + self.lifetime
        session.clear()


class LoginRateLimiter:
    """At most ``max_failures`` failed logins per client per ``window`` seconds.

    A success does not clear earlier failures: that would let a guesser who also holds one valid
    account reset the counter at will.
    """

    def __init__(
        self, max_failures: int = 5, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, deque[float]] = {}

    def _prune(self, client: str, now: float) -> deque[float]:
        times = self._failures.setdefault(client, deque())
        while times and now - times[0] >= self.window:
            times.popleft()
        return times

    def retry_after(self, client: str) -> int | None:
        """Seconds until the client may try again, or None if it may try now."""
        now = self._clock()
        with self._lock:
            times = self._prune(client, now)
            if len(times) < self.max_failures:
                if not times:
                    self._failures.pop(client, None)
                return None
            return max(1, int(times[0] + self.window - now + 0.999))

    def record_failure(self, client: str) -> None:
        now = self._clock()
        with self._lock:
            self._prune(client, now).append(now)


def csrf_token(session: MutableMapping[str, Any]) -> str:
    """The session's CSRF token, created on first use."""
    token = session.get("csrf")
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def csrf_ok(session: MutableMapping[str, Any], presented: str | None) -> bool:
    expected = session.get("csrf")
    if not isinstance(expected, str) or not expected or not presented:
        return False
    return _same(presented, expected)


def _origin_allowed(headers: Headers, allowed: AllowedHosts) -> bool:
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


class AuthMiddleware:
    """Lets a request through only with a valid bearer token or login session (or in open mode).

    - Public paths answer to anyone.
    - API paths without credentials get 401 JSON; pages get a redirect to ``/login``.
    - Unsafe methods authenticated by the session cookie must carry the session's CSRF token in
      the ``X-CSRF-Token`` header. A bearer token is never sent by a browser on its own, so
      bearer requests need none.

    Sits inside ``SessionMiddleware`` so ``scope["session"]`` is set.
    """

    def __init__(
        self, app: ASGIApp, authenticator: Authenticator, allowed_hosts: AllowedHosts, sessions: SessionGuard
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.allowed_hosts = allowed_hosts
        self.sessions = sessions

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

        if self.authenticator.check_bearer(headers.get("authorization")):
            scope["panel_user"] = "token"
            await self.app(scope, receive, send)
            return

        user = session_user
        if not user and self.authenticator.open:
            user = "local"
        if not user:
            response: Response
            if api:
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
            if not _origin_allowed(headers, self.allowed_hosts) or not csrf_ok(session, headers.get(CSRF_HEADER)):
                if session_user or headers.get("origin") is not None or headers.get("cookie"):
                    response = JSONResponse(
                        {"error": "missing or wrong CSRF token: reload the page and try again"}, status_code=403
                    )
                    await response(scope, receive, send)
                    return
        scope["panel_user"] = user
        await self.app(scope, receive, send)
