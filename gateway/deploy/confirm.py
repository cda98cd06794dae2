"""Confirmation tokens: the tools listed in ``policy.confirm`` act only on a call that was planned first.

The first call of such a tool changes nothing and answers with the plan and a token. The same call
repeated with ``confirm=<token>`` acts. A token is bound to:

- the tool and its exact arguments (a digest of them; ``confirm`` itself left out),
- the caller identity that asked for it (another token's holder cannot spend it),
- the state it was planned against: a digest of every file the stack's model is read from (the
  compose file, its includes and extended files, env files and ``.env``, by their bytes; for
  ``deploy`` and ``rollback``, those of the model they would bring) and of its containers
  (``Planner.state``), so a token handed out before an included file changed is void.

It works once and lasts :data:`CONFIRM_TTL_S`. Tokens live in this process only: a restart voids
them, which costs a caller one more plan.

This is a guard against acting unseen, not an authorisation: whoever may call the tool may also
repeat it with the token. Scopes decide who may call it at all.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfirmationRequired, PolicyViolation

__all__ = ["CONFIRM_TTL_S", "Confirmations", "call_digest"]

CONFIRM_TTL_S = 600.0
# Tokens nobody redeemed pile up; past this many, the oldest go first.
MAX_PENDING = 1024


def call_digest(tool: str, arguments: Mapping[str, Any]) -> str:
    """A digest of one call: the tool and every argument but ``confirm``, in a canonical form."""
    canonical = {k: v for k, v in arguments.items() if k != "confirm"}
    text = json.dumps({"tool": tool, "arguments": canonical}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class _Pending:
    call: str
    caller: str
    state: str
    expires: float


class Confirmations:
    """The tools that need confirming, and the tokens handed out for them (thread-safe)."""

    def __init__(
        self, tools: Iterable[str] = (), *, ttl: float = CONFIRM_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.tools = frozenset(tools)
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        # Keyed by the token's hash: the tokens themselves are not kept.
        self._pending: OrderedDict[str, _Pending] = OrderedDict()

    def required(self, tool: str) -> bool:
        return tool in self.tools

    def issue(
        self, tool: str, arguments: Mapping[str, Any], *, caller: str, state: str, plan: str
    ) -> ConfirmationRequired:
        """A new token for this call, as the error that carries it (raise it: nothing was changed)."""
        token = secrets.token_urlsafe(18)
        now = self._clock()
        with self._lock:
            self._expire(now)
            self._pending[_key(token)] = _Pending(call_digest(tool, arguments), caller, state, now + self.ttl)
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
        minutes = f"{self.ttl / 60:g}"
        message = (
            f"{tool} on '{arguments.get('project')}' needs confirmation (the operator's policy.confirm lists "
            f"'{tool}'); nothing was changed.\n{plan}\n"
            f'To go ahead, repeat the same call with confirm="{token}". The token works once, for '
            f"{minutes} minutes, and only while the stack stays as planned."
        )
        return ConfirmationRequired(message, token=token)

    def redeem(self, token: str, tool: str, arguments: Mapping[str, Any], *, caller: str, state: str) -> None:
        """Spend ``token`` on this call. It is gone afterwards, whether it fitted or not.

        Raises:
            PolicyViolation: unknown, spent, expired, issued for another call or caller, or the
                state changed since the plan; saying to call again without ``confirm``.
        """
        now = self._clock()
        with self._lock:
            self._expire(now)
            pending = self._pending.pop(_key(token), None) if isinstance(token, str) else None
        again = "call again without confirm to get a new plan and token"
        if pending is None or not secrets.compare_digest(pending.caller, caller):
            raise PolicyViolation(
                f"the confirmation token is unknown, already used or expired (tokens last "
                f"{self.ttl / 60:g} minutes and work once); nothing was changed; {again}"
            )
        if not secrets.compare_digest(pending.call, call_digest(tool, arguments)):
            raise PolicyViolation(
                f"the confirmation token was issued for a different call (another tool or other arguments); "
                f"nothing was changed; {again}"
            )
        if not secrets.compare_digest(pending.state, state):
            raise PolicyViolation(
                f"'{arguments.get('project')}' changed since the plan was made (its files or containers); "
                f"nothing was changed; {again}"
            )

    def _expire(self, now: float) -> None:
        for key in [k for k, p in self._pending.items() if p.expires <= now]:
            del self._pending[key]


def _key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
