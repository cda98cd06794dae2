"""Tasks and idempotency keys for the write tools, on both protocol revisions (see docs/mcp.md).

:class:`TaskSupport` puts the parts together for one server: the stores in the state folder
(:mod:`gateway.tasks`, :mod:`gateway.idempotency`), the runner of detached calls (:mod:`.runs`),
the ``tools/call`` interceptor (:mod:`.calls`), the ``tasks/*`` methods and the extension that
carries them (:mod:`.methods`), and the 2025-11-25 middleware (:mod:`.legacy`).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.abc

from ...fleet import Fleet
from ...idempotency import KeyLedger
from ...operations import ComposeOperations
from ...tasks import TaskStore
from .calls import TaskCalls
from .legacy import legacy_middleware
from .methods import TaskMethods, TasksExtension
from .outcomes import engine_now_of
from .runs import Runner
from .wire import TASKS_EXTENSION

__all__ = ["TaskSupport", "TASKS_EXTENSION"]


class TaskSupport:
    """Tasks and keys for one server. Run :meth:`run` for the server's lifetime: detached calls run there.

    Without a ``state_dir`` tasks and keys are kept in memory only (tests, an embedding app).

    Raises:
        StateUnavailable: the state folder's tasks or keys cannot be read.
    """

    def __init__(
        self, ops: ComposeOperations, state_dir: Path | None, write_tools: frozenset[str], fleet: Fleet | None = None
    ) -> None:
        self.tasks = TaskStore(state_dir / "tasks" if state_dir is not None else None)
        self.keys = KeyLedger(state_dir / "keys" if state_dir is not None else None)
        self.tasks.open()
        self.keys.open()
        self.runner = Runner(self.tasks, self.keys, engine_now_of(fleet or Fleet.single(ops)))
        self.calls = TaskCalls(self.runner, audit_refusal=ops.audit_refusal, write_tools=write_tools)
        self.extension = TasksExtension(self.calls, TaskMethods(self.runner))
        self.middleware = legacy_middleware(write_tools)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run detached calls until cancelled (the gateway stops; calls still running end interrupted)."""
        await self.runner.run(task_status=task_status)
