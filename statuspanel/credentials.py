"""The credentials the panel accepts: its token, an optional username and password from config, and the people.

The people are the gateway's (``compose-agent users``): the same names and passwords log in here
as on the gateway's OAuth login page, and the panel acts for them, audited as them and within
their grants (the gateway checks those).
"""

from __future__ import annotations

import hashlib
import hmac
import json

from gateway.api import People

__all__ = ["Authenticator", "secret_equal"]


def secret_equal(a: str, b: str) -> bool:
    """Compare two secrets in constant time (as bytes: ``compare_digest`` refuses non-ASCII text)."""
    return hmac.compare_digest(a.encode(), b.encode())


class Authenticator:
    """Checks credentials: the panel token, and an optional username and password from config.

    With neither configured the panel is *open*: every request counts as authenticated. The entry
    point allows that only on a loopback address.
    """

    def __init__(
        self,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        people: People | None = None,
    ) -> None:
        self._token = token or None
        self._username = username or None
        self._password = password or None
        self.people = people

    def set_token(self, token: str | None) -> None:
        """Accept a rotated panel token (and refuse the old one) from now on."""
        self._token = token or None

    @property
    def open(self) -> bool:
        """No token and no password: every request counts as authenticated (loopback only)."""
        return self._token is None and not self.password_login

    @property
    def password_login(self) -> bool:
        """A username and password form is offered: a configured login, or any of the people."""
        return (self._username is not None and self._password is not None) or bool(self.people)

    @property
    def token_login(self) -> bool:
        return self._token is not None

    def check_token(self, candidate: str) -> bool:
        """True when ``candidate`` is the panel token (compared in constant time)."""
        if self._token is None or not candidate:
            return False
        return secret_equal(candidate, self._token)

    def check_bearer(self, authorization: str | None) -> bool:
        """True for ``Authorization: Bearer <panel token>``."""
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        return scheme.lower() == "bearer" and self.check_token(value.strip())

    def check_password(self, username: str, password: str) -> bool:
        """True when both match the configured login."""
        if self._username is None or self._password is None:
            return False
        # Both compared every time, so the timing says nothing about which one was wrong.
        user_ok = secret_equal(username, self._username)
        pass_ok = secret_equal(password, self._password)
        return user_ok and pass_ok

    async def check_person(self, username: str, password: str) -> str | None:
        """The name of the person ``username`` if ``password`` is theirs (a slow check, in a worker thread)."""
        if self.people is None or not username:
            return None
        person = await self.people.authenticate(username, password)
        return None if person is None else person.name

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
            if self._username is None or self._password is None or not secret_equal(user, self._username):
                return None
            material = ["password", self._username, self._password]
        elif method == "person":
            # A removed person, or a new password, ends every session they had.
            person = self.people.get(user) if self.people is not None else None
            if person is None:
                return None
            material = ["person", person.name, person.fingerprint()]
        else:
            return None
        return hmac.new(key, json.dumps(material).encode(), hashlib.sha256).hexdigest()
