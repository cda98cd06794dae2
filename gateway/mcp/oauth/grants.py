"""What the authorization server remembers: registered clients, authorization codes, access and refresh tokens.

Codes and tokens are kept under the SHA-256 of their value only: the document (the state folder's
``oauth.json``, or ``secret/.../oauth`` in Vault) holds nothing a caller could present. A code or
token is 256 random bits, so a plain hash is enough (a slow one guards guessable passwords only).

Everything one authorization produced (its code, then each access and refresh token it was
exchanged or refreshed for) shares a *family* id. Revoking, a replayed code and a reused refresh
token end the whole family: whoever holds a copy of any of them is out.

The in-memory maps are the truth while the gateway runs; each change is written through to the
document (whole, atomically) so that a restart logs no one out.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import anyio

from ...auth.documents import Document
from ...errors import GatewayError

__all__ = ["Grants", "ClientRecord", "CodeRecord", "TokenRecord", "digest", "new_secret"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
TokenKind = Literal["access", "refresh"]


def digest(secret: str) -> str:
    """How a code or token is stored and looked up: its SHA-256, hex."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_secret() -> str:
    """A fresh code or token: 256 bits, URL-safe (RFC 6749 asks for at least 128)."""
    return secrets.token_urlsafe(32)


@dataclass
class ClientRecord:
    """A dynamically registered client: its registration (secret included: a client secret is
    useless without a code or refresh token, which are only hashed) and when it was last used."""

    info: dict[str, Any]
    registered: float
    used: float = 0.0


@dataclass
class CodeRecord:
    client_id: str
    scopes: list[str]
    expires_at: float
    code_challenge: str
    redirect_uri: str
    redirect_uri_provided_explicitly: bool
    resource: str
    subject: str
    family: str


@dataclass
class TokenRecord:
    kind: TokenKind
    client_id: str
    scopes: list[str]
    expires_at: int
    resource: str
    subject: str
    family: str


class Grants:
    """Clients, codes and tokens, in memory and written through to ``document``.

    ``spent`` remembers used codes and rotated refresh tokens (by hash, with their family) until
    they would have expired anyway, so that presenting one again is recognised as a replay.
    """

    def __init__(self, document: Document | None, *, clock: Callable[[], float] = time.time) -> None:
        self.document = document
        self.clock = clock
        self.clients: dict[str, ClientRecord] = {}
        self.codes: dict[str, CodeRecord] = {}
        self.tokens: dict[str, TokenRecord] = {}
        self.spent: dict[str, tuple[str, float]] = {}  # digest -> (family, until)
        self._lock = anyio.Lock()
        self._dirty = False

    # -- persistence ------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read what a previous run left (nothing, the first time).

        Raises:
            ConfigError, VaultError: the document cannot be read or is not ours.
        """
        if self.document is None:
            return
        snapshot = await self.document.read()
        data = snapshot.data or {}
        if data and data.get("version") != FORMAT_VERSION:
            raise GatewayError(f"{self.document.description} is not an OAuth document of version {FORMAT_VERSION}")
        try:
            self.clients = {k: ClientRecord(**v) for k, v in data.get("clients", {}).items()}
            self.codes = {k: CodeRecord(**v) for k, v in data.get("codes", {}).items()}
            self.tokens = {k: TokenRecord(**v) for k, v in data.get("tokens", {}).items()}
            self.spent = {k: (str(v[0]), float(v[1])) for k, v in data.get("spent", {}).items()}
        except (TypeError, ValueError, IndexError, AttributeError) as exc:
            where = self.document.description
            raise GatewayError(f"{where} is malformed ({type(exc).__name__}); move it away") from None
        self.purge()
        where = self.document.description
        logger.info("OAuth: %d client(s) and %d token(s) from %s", len(self.clients), len(self.tokens), where)

    def _dump(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "clients": {k: asdict(v) for k, v in self.clients.items()},
            "codes": {k: asdict(v) for k, v in self.codes.items()},
            "tokens": {k: asdict(v) for k, v in self.tokens.items()},
            "spent": {k: [family, until] for k, (family, until) in self.spent.items()},
        }

    async def save(self) -> None:
        """Write the current state through to the document (one writer at a time, the latest state wins).

        A failure is logged, not raised: the state in memory is right, and the next change writes again.
        """
        self._dirty = True
        if self.document is None:
            return
        async with self._lock:
            if not self._dirty:
                return  # a save that queued behind this one already wrote the latest state
            self._dirty = False
            try:
                await self.document.replace(self._dump())
            except Exception as exc:  # noqa: BLE001 - the next change retries; the server goes on
                self._dirty = True
                logger.error(
                    "OAuth: cannot write %s (%s); a restart now would lose the latest grants",
                    self.document.description,
                    exc if isinstance(exc, GatewayError) else type(exc).__name__,
                )

    # -- upkeep -------------------------------------------------------------------------------------

    def purge(self) -> int:
        """Forget expired codes, tokens and spent marks; returns how many entries went."""
        now = self.clock()
        before = len(self.codes) + len(self.tokens) + len(self.spent)
        self.codes = {k: v for k, v in self.codes.items() if v.expires_at > now}
        self.tokens = {k: v for k, v in self.tokens.items() if v.expires_at > now}
        self.spent = {k: v for k, v in self.spent.items() if v[1] > now}
        return before - len(self.codes) - len(self.tokens) - len(self.spent)

    def revoke_family(self, family: str) -> int:
        """End every code and token of one authorization; returns how many there were."""
        codes = [k for k, v in self.codes.items() if v.family == family]
        tokens = [k for k, v in self.tokens.items() if v.family == family]
        for key in codes:
            del self.codes[key]
        for key in tokens:
            del self.tokens[key]
        return len(codes) + len(tokens)

    def revoke_subject(self, subject: str) -> int:
        """End every code and token of one person (removed by the operator)."""
        families = {v.family for v in self.codes.values() if v.subject == subject}
        families |= {v.family for v in self.tokens.values() if v.subject == subject}
        return sum(self.revoke_family(f) for f in families)

    def spend(self, key: str, family: str, until: float) -> None:
        """Remember that the code or refresh token hashed ``key`` was used, until ``until``."""
        self.spent[key] = (family, until)

    def replayed(self, key: str) -> str | None:
        """The family of a code or refresh token used before (a replay); None if it never was."""
        mark = self.spent.get(key)
        return mark[0] if mark is not None and mark[1] > self.clock() else None

    def issue(
        self, kind: TokenKind, *, client_id: str, scopes: list[str], ttl: int, resource: str, subject: str, family: str
    ) -> tuple[str, TokenRecord]:
        """A new token of ``kind`` (its value, returned once) and its record, kept under its hash."""
        value = new_secret()
        record = TokenRecord(kind, client_id, scopes, int(self.clock()) + ttl, resource, subject, family)
        self.tokens[digest(value)] = record
        return value, record
