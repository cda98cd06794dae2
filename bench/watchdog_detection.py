"""Detection latency of the watchdog: Docker events against periodic inspects.

Kills a busybox target repeatedly and measures the time from the kill to the watchdog noticing
(its state leaving Healthy), once following the events stream and once polling only. The
watchdog restarts the target between repetitions. Prints a p50/max table; asserts nothing.

    python bench/watchdog_detection.py [--reps 10] [--check-interval 2]

Needs a running Docker engine; builds the busybox test image from /bin/busybox if it is missing.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from typing import Any

import anyio
import docker
from _common import BUSYBOX_IMAGE, Sample, ensure_busybox_image, machine_context, random_name

from watchdog import Change, ComposeAgentWatchdog, State, WatchdogConfig

SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


INITIAL_DELAY_S = 0.2


def _running_since(client: Any, name: str) -> str | None:
    state = client.api.inspect_container(name)["State"]
    return str(state["StartedAt"]) if state["Running"] else None


async def measure(
    client: Any, *, events: bool, check_interval: float, reps: int
) -> tuple[list[float], list[float], list[float]]:
    """Seconds from the kill call, and from its return, to the watchdog's first non-Healthy transition;
    and from the kill call to the target running again."""
    name = random_name("wdbench")
    client.containers.run(BUSYBOX_IMAGE, SLEEPER, name=name, detach=True)
    noticed = anyio.Event()
    noticed_at: list[float] = []

    def on_change(change: Change) -> None:
        if change.kind == "transition" and change.state is not State.HEALTHY and change.previous is State.HEALTHY:
            noticed_at.append(time.perf_counter())
            noticed.set()

    config = WatchdogConfig(
        target_container=name,
        check_interval_secs=check_interval,
        initial_delay_secs=INITIAL_DELAY_S,
        max_restart_attempts=reps + 1,
        stable_period_secs=0.5,
        restart_stop_timeout_secs=1,
        watch_events=events,
    )
    watchdog = ComposeAgentWatchdog(config, on_change=on_change)
    latencies: list[float] = []
    after_return: list[float] = []
    back: list[float] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watchdog.run)
            await watchdog.wait_started()
            for _ in range(reps):
                while watchdog.status().state != "Healthy":
                    await anyio.sleep(0.05)
                # Kill at a random phase of the polling cycle, as a real crash would.
                await anyio.sleep(random.uniform(0.1, check_interval + 0.1))
                noticed = anyio.Event()
                started_before = await anyio.to_thread.run_sync(lambda: _running_since(client, name))
                start = time.perf_counter()
                await anyio.to_thread.run_sync(lambda: client.api.kill(name))
                returned = time.perf_counter()
                with anyio.fail_after(check_interval + 10):
                    await noticed.wait()
                latencies.append(noticed_at[-1] - start)
                after_return.append(noticed_at[-1] - returned)
                with anyio.fail_after(check_interval + 30):
                    while await anyio.to_thread.run_sync(lambda: _running_since(client, name)) in (
                        None,
                        started_before,
                    ):
                        await anyio.sleep(0.01)
                back.append(time.perf_counter() - start)
            tg.cancel_scope.cancel()
    finally:
        client.api.remove_container(name, force=True)
    return latencies, after_return, back


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--check-interval", type=float, default=2.0, help="polling interval of both modes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the watchdog's transition lines would drown the table
    ensure_busybox_image()
    before = machine_context()
    client = docker.from_env()
    try:
        rows = []
        for events in (True, False):
            latencies, after, back = await measure(
                client, events=events, check_interval=args.check_interval, reps=args.reps
            )
            rows.append((events, latencies, after, back))
    finally:
        client.close()
    print(f"kill -> noticed, {args.reps} repetitions, check_interval {args.check_interval:g} s")
    print("(from the kill call; the last two columns from its return, i.e. less the engine's own kill time)")
    print(f"{'mode':<18} {'p50 ms':>8} {'max ms':>8} {'p50 ms':>8} {'max ms':>8}")
    for events, latencies, after, _ in rows:
        call = Sample("events + polling" if events else "polling only", [x * 1000 for x in latencies])
        ret = Sample(call.name, [x * 1000 for x in after])
        print(f"{call.name:<18} {call.p50:>8.1f} {max(call.values):>8.1f} {ret.p50:>8.1f} {max(ret.values):>8.1f}")
    limit = (INITIAL_DELAY_S + 1.0) * 1000
    print(f"\nkill -> running again, initial delay {INITIAL_DELAY_S:g} s (target: within {limit:.0f} ms)")
    for events, _, _, back in rows:
        again = Sample("events + polling" if events else "polling only", [x * 1000 for x in back])
        verdict = "met" if max(again.values) <= limit else "missed"
        print(f"{again.name:<18} p50 {again.p50:>8.1f} ms  max {max(again.values):>8.1f} ms  {verdict} (max)")
    print(f"machine before: {before}; after: {machine_context()}")


if __name__ == "__main__":
    anyio.run(main)
