"""Authorization requests between ``/authorize`` and the person's answer on the consent page.

One is made when a client sends a browser to ``/authorize``; the login and consent pages carry only
its id. It is bound to the first browser that opens its login page (by a random cookie, kept as a
hash), and each form carries a CSRF token of its own: a page on another site can neither submit
for someone else's browser nor guess the token. Requests live in memory for ten minutes at most,
and there are never more than :data:`MAX_PENDING` (the oldest go first), so a flood of
``/authorize`` calls costs bounded memory.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from .grants import digest

__all__ = ["MAX_PENDING", "PENDING_SECONDS", "Pending", "PendingRequests"]

MAX_PENDING = 2000
PENDING_SECONDS = 600.0
Stage = Literal["login", "consent"]


@dataclass
class Pending:
    """An authorization request waiting for a person: what the client asked, and how far the person got."""

    id: str
    client_id: str
    client_name: str
    redirect_uri: str
    redirect_uri_provided_explicitly: bool
    state: str | None
    scopes: list[str] | None
    code_challenge: str
    resource: str
    expires: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    browser: str | None = None
    stage: Stage = "login"
    person: str | None = None

    def bound_to(self, cookie: str | None) -> bool:
        """True when ``cookie`` is the browser this request is bound to."""
        return self.browser is not None and cookie is not None and hmac.compare_digest(self.browser, digest(cookie))

    def csrf_ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.csrf.encode())

    def next_step(self, stage: Stage, person: str | None = None) -> None:
        """Move on, with a fresh CSRF token: a form of the previous step cannot be replayed on this one."""
        self.stage = stage
        self.person = person
        self.csrf = secrets.token_urlsafe(32)


class PendingRequests:
    """The open authorization requests, by id, bounded in number and age."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_pending: int = MAX_PENDING) -> None:
        self.clock = clock
        self.max_pending = max_pending
        self._open: OrderedDict[str, Pending] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def open(
        self,
        *,
        client_id: str,
        client_name: str,
        redirect_uri: str,
        redirect_uri_provided_explicitly: bool,
        state: str | None,
        scopes: list[str] | None,
        code_challenge: str,
        resource: str,
    ) -> Pending:
        self._sweep()
        while len(self._open) >= self.max_pending:
            self._open.popitem(last=False)
        pending = Pending(
            id=secrets.token_urlsafe(24),
            client_id=client_id,
            client_name=client_name,
            redirect_uri=redirect_uri,
            redirect_uri_provided_explicitly=redirect_uri_provided_explicitly,
            state=state,
            scopes=scopes,
            code_challenge=code_challenge,
            resource=resource,
            expires=self.clock() + PENDING_SECONDS,
        )
        self._open[pending.id] = pending
        return pending

    def get(self, request_id: str | None) -> Pending | None:
        """The open request ``request_id``, if it is open and not expired."""
        if not request_id or len(request_id) > 64:
            return None
        pending = self._open.get(request_id)
        if pending is None or pending.expires <= self.clock():
            return None
        return pending

    def close(self, request_id: str) -> None:
        """The person answered (or it failed for good): no form of it counts any more."""
        self._open.pop(request_id, None)

    def _sweep(self) -> None:
        now = self.clock()
        for key in [k for k, p in self._open.items() if p.expires <= now]:
            del self._open[key]
