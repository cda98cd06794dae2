"""Login sessions: bound to the credential that opened them, for a fixed time from login.

The session itself is Starlette's ``SessionMiddleware`` (a cookie signed with itsdangerous); this
module decides whether the login it holds still counts.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any, Literal

from .credentials import Authenticator, secret_equal
from .csrf import new_csrf_token

__all__ = ["SessionGuard", "SESSION_LIFETIME", "LoginMethod"]

# A login counts for this long from the moment it happened, however often the cookie is re-signed.
SESSION_LIFETIME = 12 * 60 * 60
# A session stamped a little in the future is one from before the clock was set back, not a forgery.
_CLOCK_SLACK = 300

LoginMethod = Literal["token", "password", "person"]


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
        """Replace ``session`` with a fresh login (and a fresh CSRF token) for ``user``.

        Raises:
            ValueError: no credential of that ``method`` is configured.
        """
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
                "csrf": new_csrf_token(),
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
        if expected is None or not secret_equal(fingerprint, expected):
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
