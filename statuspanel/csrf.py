"""The session's CSRF token: made once per login, carried by the page, checked on every unsafe request."""

from __future__ import annotations

import secrets
from collections.abc import MutableMapping
from typing import Any

from .credentials import secret_equal

__all__ = ["CSRF_HEADER", "csrf_token", "csrf_ok", "new_csrf_token"]

# Where the page's JavaScript sends it; the login form sends it as the field "csrf".
CSRF_HEADER = "x-csrf-token"


def new_csrf_token() -> str:
    """A fresh random token."""
    return secrets.token_urlsafe(32)


def csrf_token(session: MutableMapping[str, Any]) -> str:
    """The session's CSRF token, created on first use."""
    token = session.get("csrf")
    if not isinstance(token, str) or not token:
        token = new_csrf_token()
        session["csrf"] = token
    return token


def csrf_ok(session: MutableMapping[str, Any], presented: str | None) -> bool:
    """True when ``presented`` is the session's CSRF token (compared in constant time)."""
    expected = session.get("csrf")
    if not isinstance(expected, str) or not expected or not presented:
        return False
    return secret_equal(presented, expected)
