"""Password hashes: scrypt from the standard library, salted, slow, and checked in constant time.

A stored hash reads ``scrypt$<n>$<r>$<p>$<salt>$<key>`` (salt and key in unpadded base64url), so
the cost can be raised later without invalidating what is stored: each hash carries its own.

The cost is OWASP's scrypt setting for 32 MiB of memory (N=2**15, r=8, p=3): about a tenth of a
second a check here, which a person logging in does not notice and a guesser does. Checks run in
a worker thread, at most :data:`CONCURRENT_CHECKS` at once, so a burst of logins costs bounded
memory and leaves the event loop free.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import anyio
import anyio.to_thread

__all__ = [
    "CONCURRENT_CHECKS",
    "MAX_PASSWORD",
    "MIN_PASSWORD",
    "check_new_password",
    "hash_password",
    "verify_password",
    "verify_password_async",
]

MIN_PASSWORD = 12
MAX_PASSWORD = 1024
CONCURRENT_CHECKS = 2

_N, _R, _P = 2**15, 8, 3
_SALT_BYTES = 16
_KEY_BYTES = 32
# 128 * r * N bytes are needed; OpenSSL's default ceiling is exactly 32 MiB, so give it room.
_MAXMEM = 64 * 1024 * 1024


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=_KEY_BYTES)


def check_new_password(password: str) -> str:
    """``password`` if it may be set, else ``ValueError`` saying what a password must be (never echoing it)."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"the password is too short: use at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"the password is too long: use at most {MAX_PASSWORD} characters")
    if not password.isprintable():
        raise ValueError("the password has control characters (a line break?); use printable characters only")
    return password


def hash_password(password: str) -> str:
    """A new salted hash of ``password`` (slow: that is the point)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _derive(password, salt, _N, _R, _P)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` is the one ``encoded`` was made from; False for a malformed hash too."""
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(key)
        # Bounds, so a hash edited by hand cannot ask for gigabytes.
        n_i, r_i, p_i = int(n), int(r), int(p)
        if not (2 <= n_i <= 2**20 and 1 <= r_i <= 32 and 1 <= p_i <= 16) or 128 * r_i * n_i > _MAXMEM:
            return False
        actual = _derive(password[:MAX_PASSWORD], _unb64(salt), n_i, r_i, p_i)
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


async def verify_password_async(password: str, encoded: str, limiter: anyio.CapacityLimiter) -> bool:
    """:func:`verify_password` in a worker thread; ``limiter`` bounds how many run at once (and so the memory)."""
    return await anyio.to_thread.run_sync(verify_password, password, encoded, limiter=limiter)
