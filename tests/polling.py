"""Waiting for a condition in tests: poll it under a deadline, never sleep a fixed time.

``eventually`` is for async tests (``eventually_in_thread`` when the check blocks), ``wait_for``
for plain ones. Both return the check's first
truthy value, and fail the test naming what did not happen.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import pytest

__all__ = ["eventually", "eventually_in_thread", "wait_for"]

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "the condition",
) -> T:
    """Await ``check`` until it returns something truthy, and return that."""
    try:
        with anyio.fail_after(timeout):
            while not (value := await check()):
                await anyio.sleep(interval)
            return value
    except TimeoutError:
        pytest.fail(f"not within {timeout:g} s: {what}")


async def eventually_in_thread(
    check: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "the condition",
) -> T:
    """Like :func:`eventually` for a blocking ``check`` (docker-py, say), run in a worker thread.

    The thread keeps the event loop free for the code under test, which often runs on it too.
    """

    async def in_thread() -> T:
        return await anyio.to_thread.run_sync(check)

    return await eventually(in_thread, timeout=timeout, interval=interval, what=what)


def wait_for(
    check: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    what: str = "the condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``check`` until it returns something truthy, and return that; for tests that are not async.

    Exceptions of the ``ignore`` types count as "not yet" (a server that is still starting, say);
    the last one is named if the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except ignore as exc:
            last = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last!r})" if last is not None else ""
            pytest.fail(f"not within {timeout:g} s: {what}{detail}")
        time.sleep(interval)
