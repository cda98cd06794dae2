"""What runs beside the server for its whole life, and what a dead gateway left behind.

Both transports run :func:`background_tasks` supervised (:func:`gateway.mcp.health.supervise`), and
the entry point looks for orphans (:func:`start_orphan_scan`) once at start.
"""

from __future__ import annotations

import logging
import threading

import anyio

from ..compose.process import find_orphans, stop_orphans
from ..mcp.app import BackgroundTask
from ..mcp.notify import Notifier
from ..mcp.watch import StackWatcher
from ..operations import ComposeOperations

__all__ = ["AUDIT_SUMMARY_INTERVAL_S", "background_tasks", "start_orphan_scan"]

logger = logging.getLogger("gateway")

# How often the audit writes the summaries of repeated refusals.
AUDIT_SUMMARY_INTERVAL_S = 60.0


def background_tasks(ops: ComposeOperations, notifier: Notifier) -> dict[str, BackgroundTask]:
    """The tasks both transports run for the server's life, by name (each is run supervised)."""
    tasks: dict[str, BackgroundTask] = {"notifier": notifier.run, "stack watcher": StackWatcher(ops, notifier).run}
    audit = ops.audit
    if audit is not None:

        async def summarise_refusals() -> None:
            try:
                while True:
                    await anyio.sleep(AUDIT_SUMMARY_INTERVAL_S)
                    audit.flush_summaries()
            finally:
                # At shutdown too: uvicorn re-raises SIGTERM once it has stopped, which ends the
                # process before the entry point's own clean-up could close the audit.
                audit.flush_summaries()

        tasks["audit summaries"] = summarise_refusals
    return tasks


def report_orphans() -> None:
    """Stop the CLI children an earlier gateway left running (its keeper died with it), and say so."""
    orphans = find_orphans()
    for orphan in orphans:
        logger.warning(
            "found a process left by an earlier gateway (pid %d, gone): pid %d, %s; stopping it",
            orphan.parent,
            orphan.pid,
            orphan.command,
        )
    stop_orphans(orphans)


def start_orphan_scan() -> None:
    """Look for orphans off the start-up path: reading other processes' environments can wait on them."""
    threading.Thread(target=report_orphans, name="find-orphans", daemon=True).start()
