"""The profiles a stack's ``.env`` turns on, read the one way the guard and Compose agree on.

The guard judges Compose's model with every profile enabled; Compose then runs that judged model
with an empty ``--env-file`` (nothing it reads later can differ from what was judged), so the
``COMPOSE_PROFILES`` a stack's ``.env`` sets must be handed over as ``--profile`` flags instead.

Compose reads ``COMPOSE_PROFILES`` as a dotenv value: unquoted (up to a `` #`` comment, trimmed),
single-quoted (literal) or double-quoted (escapes and variables expanded), the last line naming it
winning, then split on commas with every name trimmed. The guard takes only the forms whose reading
is plain (checked against Compose in ``tests/gateway/policy/test_profiles.py``): profile names, or
``*``, separated by commas, with no variable, escape or quote inside. Anything else is refused with
the code ``dotenv_profiles``: write the names plainly.
"""

from __future__ import annotations

import re

from .reading import ReadRefused

__all__ = ["compose_profiles"]

_LINE = re.compile(r"^[ \t]*(?:export[ \t]+)?COMPOSE_PROFILES[ \t]*[=:](?P<value>.*)$", re.MULTILINE)
# Compose's own rule for a profile name.
_PROFILE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


def compose_profiles(dotenv: str) -> tuple[str, ...]:
    """The profiles ``COMPOSE_PROFILES`` in this ``.env`` text turns on; () when it sets none.

    Raises:
        ReadRefused: a value whose reading the guard does not take for plain (``dotenv_profiles``).
    """
    lines = _LINE.findall(dotenv)
    if not lines:
        return ()
    raw = lines[-1].strip()
    if raw[:1] in ("'", '"'):
        quote = raw[0]
        end = raw.find(quote, 1)
        rest = raw[end + 1 :].strip() if end > 0 else "?"
        if end < 0 or (rest and not rest.startswith("#")):
            _refuse(raw)
        value = raw[1:end]
    else:
        value = raw.split(" #", 1)[0].split("\t#", 1)[0].strip()
    if any(ch in value for ch in "$\\'\"`"):
        _refuse(raw)
    names = tuple(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    if any(name != "*" and not _PROFILE.fullmatch(name) for name in names):
        _refuse(raw)
    return names


def _refuse(raw: str) -> None:
    raise ReadRefused(
        "dotenv_profiles",
        f"the stack's .env sets COMPOSE_PROFILES to {raw[:80]!r}, which the policy guard does not read as plain "
        "profile names; write them plainly, separated by commas (COMPOSE_PROFILES=debug,tools)",
    )
