"""The engine's async calls for blocking code: worker threads of the event loop, and code with no loop at all.

Every read is written once, async, on the event loop. Callers that block (the catalog's listings in
worker threads, the swarm's calls, a log collector that greps in a thread so that a slow pattern
never holds the loop, a command line before its loop starts) reach it through these two functions:
from one of the loop's worker threads the call runs on that loop, and with no loop it runs on a
loop of its own. The engine's connections belong to no loop, so either way they are the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import anyio
import anyio.from_thread

__all__ = ["iterate_blocking", "run_blocking"]

T = TypeVar("T")


def run_blocking(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``await fn(*args)``, from blocking code."""

    async def call() -> T:
        return await fn(*args)

    try:
        return anyio.from_thread.run(call)
    except anyio.NoEventLoopError:
        return _on_a_loop_of_its_own(call)


def _on_a_loop_of_its_own(call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call`` on a new loop: here, or in a thread of its own when this thread runs a loop already
    (a blocking call made from async code blocks that loop meanwhile, as any blocking call would)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return anyio.run(call)
    with ThreadPoolExecutor(1, thread_name_prefix="engine-blocking") as pool:
        return pool.submit(anyio.run, call).result()


def iterate_blocking(factory: Callable[[], AsyncGenerator[T, None]]) -> Iterator[T]:
    """The items of the async generator ``factory()``, from blocking code, one at a time.

    From a worker thread the iterator runs on the loop item by item, and stopping early closes it
    there. With no loop it is read to its end on a loop of its own first (an iterator cannot span
    loops), so only worker threads get the bounded memory of a stream.
    """
    iterator = factory()

    async def step() -> T:
        return await iterator.__anext__()

    try:
        first = anyio.from_thread.run(step)
    except anyio.NoEventLoopError:

        async def collect() -> list[T]:
            return [item async for item in factory()]

        yield from _on_a_loop_of_its_own(collect)
        return
    except StopAsyncIteration:
        return
    try:
        yield first
        while True:
            try:
                item = anyio.from_thread.run(step)
            except StopAsyncIteration:
                return
            yield item
    finally:

        async def finish() -> None:
            await iterator.aclose()

        anyio.from_thread.run(finish)
