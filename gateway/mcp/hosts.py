"""The ``host`` argument every stack tool takes, and how it joins a call's arguments.

A gateway of one engine has only the host ``local``: the argument is optional and described in a
few words, so its tool listing stays as it was but for one line per tool.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from ..fleet import LOCAL_HOST

__all__ = ["HostArg", "LOCAL_HOST", "OneHost", "on_host"]

HostArg = Annotated[
    str,
    Field(
        description="Host (from list_stacks); omit for local",
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9_-]*$",
    ),
]

# list_stacks lists every host unless told one.
OneHost = Annotated[
    str | None,
    Field(description="Only this host's stacks; omit for every host", max_length=63, pattern=r"^[a-z0-9][a-z0-9_-]*$"),
]


def on_host(arguments: dict[str, Any], host: str) -> dict[str, Any]:
    """A call's arguments as audited, confirmed and approved: naming its host, unless it is ``local``.

    A confirmation, an approval and an idempotency key are bound to these, so one given for a stack
    on one host does not act on the same-named stack of another. Local calls read as they always did.
    """
    return arguments if host == LOCAL_HOST else {**arguments, "host": host}
