"""Validation at the edge: every input checked before anything reaches the gateway, answered as 400.

Where the gateway has a rule (names, services, tail, since, grep), the panel runs the gateway's own
validator, so the two can never disagree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.requests import Request

from gateway.api import DEFAULT_TAIL, MAX_TAIL, InvalidInput, compile_grep, parse_since, validate_project_name
from gateway.api import validate_services as check_services
from gateway.api import validate_tail as check_tail

from .errors import BadRequest

__all__ = [
    "validate_project",
    "validate_services",
    "validate_tail",
    "validate_since",
    "validate_grep",
    "validate_confirm",
    "validate_version",
    "json_body",
]

_T = TypeVar("_T")
# The gateway's confirmation tokens are URL-safe base64 (secrets.token_urlsafe), 24 characters.
_CONFIRM_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _at_the_edge(check: Callable[[Any], _T], value: Any) -> _T:
    """Run one of the gateway's own validators: the same rules, answered as 400."""
    try:
        return check(value)
    except InvalidInput as exc:
        raise BadRequest(str(exc)) from None


def validate_project(project: str) -> str:
    return _at_the_edge(validate_project_name, project)


def validate_services(raw: object) -> list[str] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = [s for s in raw.split(",") if s.strip()]
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise BadRequest('"services" must be a list of service names, e.g. {"services": ["web"]}')
    return _at_the_edge(check_services, [s.strip() for s in raw])


def validate_tail(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_TAIL
    try:
        tail = int(raw)
    except ValueError:
        raise BadRequest(f"tail must be a whole number from 1 to {MAX_TAIL}, not {raw[:40]!r}") from None
    return _at_the_edge(check_tail, tail)


def validate_since(raw: str | None, *, now: float | None = None) -> str | None:
    """``since`` checked with the gateway's own grammar, and passed on as given.

    Raises:
        BadRequest: not a duration, an RFC 3339 time, or Unix seconds from 0 to a day from now.
    """
    if not raw:
        return None
    _at_the_edge(lambda value: parse_since(value, now=now), raw)
    return raw


def validate_grep(raw: str | None) -> str | None:
    if not raw:
        return None
    _at_the_edge(compile_grep, raw)  # the gateway's own dialect and limits, checked before the call
    return raw


async def json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        raise BadRequest('the body must be JSON, e.g. {"services": ["web"]}, or empty') from None
    if not isinstance(data, dict):
        raise BadRequest('the body must be a JSON object, e.g. {"services": ["web"]}')
    return data


def validate_confirm(raw: object) -> str | None:
    """A confirmation token the gateway handed out, passed back as it came."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not _CONFIRM_RE.fullmatch(raw):
        raise BadRequest('"confirm" must be the token the panel was given with the plan, e.g. "k3V...": ask again')
    return raw


def validate_version(raw: object) -> int | None:
    """A version number as listed by the versions route; None for the one before the current."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 1_000_000:
        raise BadRequest('"version" must be a whole number from the versions list, e.g. {"version": 3}')
    return raw
