"""The policy guard at work: judge a stack before anything is created or shown, and mark stacks cheaply.

:meth:`PolicyGuard.evaluate` runs in two steps, and the order is the point:

1. the raw file references (:mod:`gateway.policy.references`): a reference outside the stack folder is
   refused here, before Compose runs and reads it;
2. Compose's own model with every profile enabled (``--profile '*'``), judged by
   :func:`gateway.policy.rules.judge`.

A verdict is kept with what it depended on: the signature (inode, size, mtime, ctime) of every
file that shapes the model, and where every judged host path resolved. ``up`` and ``config``
reuse an *allowed* verdict only after checking all of that afresh (a few stat calls instead of
a Compose run); ``list_stacks`` and ``ps`` marks also trust it for :data:`MARK_TTL_S`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio import to_thread

from ..compose.cli import ComposeCli
from ..errors import ComposeFailed, GatewayError, PolicyRefused, PolicyViolation
from ..models import Verdict, Violation
from ..stacks import Stack
from .references import References, collect_references
from .rules import Policy, judge, runtime_sockets, verdict

__all__ = ["PolicyGuard", "Evaluation", "refusal"]

logger = logging.getLogger(__name__)

# How long a mark is trusted without re-checking what it depends on (as the defined-services cache).
MARK_TTL_S = 30.0
# Cold marks run Compose once per stack; this many at a time, so a long list does not swamp the host.
MARK_CONCURRENCY = 4

# (path, inode, size, mtime, ctime): ctime too, since a writer can set mtime back but not ctime.
Signature = tuple[tuple[str, int, int, int, int], ...]
# (path, where it resolves, device and inode of the target or -1): a swapped symlink shows here.
Resolution = tuple[tuple[str, str, int, int], ...]


@dataclass(frozen=True)
class Evaluation:
    """A verdict, and the all-profiles model it was judged on (empty when Compose did not run now)."""

    verdict: Verdict
    model: dict[str, Any]


@dataclass
class _Judged:
    compose_file: Path
    files: list[Path]
    signature: Signature
    resolution: Resolution
    checked: float
    verdict: Verdict


def _signature(paths: Sequence[Path]) -> Signature:
    parts = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            parts.append((str(path), -1, -1, -1, -1))
            continue
        parts.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(parts)


def _resolution(paths: Iterable[str]) -> Resolution:
    parts = []
    for path in sorted(paths):
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
            parts.append((path, real, st.st_dev, st.st_ino))
        except OSError:
            parts.append((path, real, -1, -1))
    return tuple(parts)


def _still_holds(judged: _Judged, stack: Stack) -> bool:
    """True when nothing a verdict depended on has changed (blocking: a stat per file and path)."""
    return (
        stack.compose_file == judged.compose_file
        and _signature(judged.files) == judged.signature
        and _resolution(path for path, *_ in judged.resolution) == judged.resolution
    )


class PolicyGuard:
    """Judges stacks against one :class:`~gateway.policy.rules.Policy` (the operator's, read at start-up)."""

    def __init__(self, policy: Policy, *, docker_host: str | None = None, sockets: Sequence[str] | None = None) -> None:
        self.policy = policy
        self.sockets = tuple(sockets) if sockets is not None else runtime_sockets(docker_host)
        self._judged: dict[str, _Judged] = {}
        # Marks are computed in worker threads (see mark); these bound them and keep one per stack.
        self._slots = threading.BoundedSemaphore(MARK_CONCURRENCY)
        self._threads_lock = threading.Lock()
        self._stack_locks: dict[str, threading.Lock] = {}

    async def evaluate(
        self, stack: Stack, cli: ComposeCli, *, source: Path | None = None, env_file: Path | None = None
    ) -> Evaluation:
        """Judge ``stack`` now, from its files as they are, and keep the verdict with what it depends on.

        With ``source`` (and ``env_file``), judge instead the compose file (and ``.env``) that
        ``deploy`` would write there: a candidate in a scratch folder, read as if it were the stack's
        own. A candidate's verdict is not kept: it describes files that are not on disk.

        Raises:
            ComposeFailed: a compose file that is not valid YAML, or a model Compose refuses (its own
                error, from files inside the folder).
            PolicyViolation: a compose file that cannot be read at all, or one that kept changing.
        """
        assert stack.folder is not None and stack.compose_file is not None
        folder = stack.folder
        signature: Signature = ()
        if source is None:
            refs, signature = await to_thread.run_sync(_read_settled, stack)
        else:
            refs = await to_thread.run_sync(partial(collect_references, stack.compose_file, folder, source=source))
        resolved: dict[str, str] = {}

        async def keep(evaluation: Evaluation) -> Evaluation:
            if source is not None:
                return evaluation
            return await self._remember(stack, refs, signature, resolved, evaluation)

        early = self._judge({}, refs, stack, resolved)
        if early:
            # Compose would read these files while loading: stop before it runs.
            return await keep(Evaluation(verdict(early), {}))
        output = await cli.run(
            stack.name,
            ["config", "--format", "json"],
            compose_file=source or stack.compose_file,
            cwd=folder if source is None else source.parent,
            profiles=["*"],
            project_directory=None if source is None else folder,
            env_file=env_file,
        )
        try:
            model: dict[str, Any] = json.loads(output.stdout)
        except json.JSONDecodeError as exc:
            raise GatewayError(f"docker compose config printed something that is not JSON: {exc}") from exc
        return await keep(Evaluation(verdict(self._judge(model, refs, stack, resolved)), model))

    async def references_refused(self, stack: Stack) -> list[Violation]:
        """The violations among the stack's raw file references alone; Compose does not run.

        Any Compose run on a stack's files (``config``, and ``down``/``stop`` with its file) reads
        these references while loading: check them first.

        Raises:
            ComposeFailed: a compose file that is not valid YAML.
            PolicyViolation: a compose file that cannot be read at all.
        """
        assert stack.folder is not None and stack.compose_file is not None
        refs = await to_thread.run_sync(collect_references, stack.compose_file, stack.folder)
        return self._judge({}, refs, stack, {})

    async def enforce(self, stack: Stack, cli: ComposeCli, action: str, *, fresh: bool = False) -> Evaluation:
        """Refuse ``action`` unless the policy allows ``stack`` as its files are now.

        An allowed verdict is reused when nothing it depended on changed (checked now, file by file
        and path by path); then ``model`` is empty. ``fresh`` always runs Compose.

        Raises:
            PolicyRefused: naming each rule, service, value and the config.json key that would allow it.
            PolicyViolation, ComposeFailed: as :meth:`evaluate`.
        """
        judged = self._judged.get(stack.name)
        if not fresh and judged is not None and judged.verdict.allowed:
            if await to_thread.run_sync(_still_holds, judged, stack):
                judged.checked = time.monotonic()
                return Evaluation(judged.verdict, {})
        evaluation = await self.evaluate(stack, cli)
        if not evaluation.verdict.allowed:
            raise refusal(stack.name, action, evaluation.verdict)
        return evaluation

    async def mark(self, stack: Stack, cli: ComposeCli) -> Verdict:
        """The verdict ``up`` would reach, cached; never raises.

        A mark that must be computed is computed in a worker thread that outlives this call: a
        listing that stops waiting (see ``reads.MARK_BUDGET_S``) leaves it running, and the next
        call finds its result instead of starting over.
        """
        assert stack.folder is not None
        now = time.monotonic()
        judged = self._judged.get(stack.name)
        if judged is not None and now - judged.checked < MARK_TTL_S:
            return judged.verdict
        if judged is not None and await to_thread.run_sync(_still_holds, judged, stack):
            judged.checked = now
            return judged.verdict
        return await to_thread.run_sync(self._mark_now, stack, cli, now, abandon_on_cancel=True)

    def _mark_now(self, stack: Stack, cli: ComposeCli, asked: float) -> Verdict:
        """Judge ``stack`` in this worker thread, unless another thread judged it since ``asked``."""
        with self._threads_lock:
            lock = self._stack_locks.setdefault(stack.name, threading.Lock())
        with lock:
            judged = self._judged.get(stack.name)
            if judged is not None and judged.checked >= asked:
                return judged.verdict
            with self._slots:
                try:
                    # A loop of this thread's own: the caller's may have stopped waiting for it.
                    return anyio.run(self.evaluate, stack, cli).verdict
                except GatewayError as exc:
                    reason = _one_line(exc)
                    logger.info("policy guard cannot judge stack %s: %s", stack.name, reason)
                    result = Verdict(allowed=False, error=reason)
                    # Kept like a verdict, so a broken stack is not re-run through Compose on every listing.
                    assert stack.folder is not None and stack.compose_file is not None
                    files = [stack.compose_file, stack.folder / ".env"]
                    self._judged[stack.name] = _Judged(
                        stack.compose_file, files, _signature(files), (), time.monotonic(), result
                    )
                    return result

    def forget(self, name: str) -> None:
        """Drop a kept verdict, e.g. after a tool rewrote the stack's files."""
        self._judged.pop(name, None)

    def _judge(
        self, model: dict[str, Any], refs: References, stack: Stack, resolved: dict[str, str]
    ) -> list[Violation]:
        assert stack.folder is not None
        return judge(model, refs.refs, self.policy, stack.name, stack.folder, sockets=self.sockets, resolved=resolved)

    async def _remember(
        self, stack: Stack, refs: References, signature: Signature, resolved: dict[str, str], evaluation: Evaluation
    ) -> Evaluation:
        assert stack.compose_file is not None
        resolution = await to_thread.run_sync(_resolution, list(resolved))
        self._judged[stack.name] = _Judged(
            stack.compose_file, refs.files, signature, resolution, time.monotonic(), evaluation.verdict
        )
        return evaluation


def _one_line(exc: GatewayError) -> str:
    """A failure as one line for a mark: its first line, and Compose's own last word if it has one."""
    lines = str(exc).splitlines() or [type(exc).__name__]
    if isinstance(exc, ComposeFailed) and exc.stderr_tail.strip():
        last = exc.stderr_tail.strip().splitlines()[-1]
        return lines[0] if last in lines[0] else f"{lines[0]} {last}"
    return lines[0]


def _read_settled(stack: Stack, attempts: int = 3) -> tuple[References, Signature]:
    """The stack's references and its files' signature, read so that they belong together.

    The signature is taken between two reads that agree: a verdict kept under it then never
    describes content older than the signature says.

    Raises:
        PolicyViolation: the files kept changing while being read.
    """
    assert stack.compose_file is not None and stack.folder is not None
    refs = collect_references(stack.compose_file, stack.folder)
    for _ in range(attempts):
        signature = _signature(refs.files)
        again = collect_references(stack.compose_file, stack.folder)
        if again.refs == refs.refs and again.files == refs.files and _signature(again.files) == signature:
            return refs, signature
        refs = again
    raise PolicyViolation(f"the compose files of '{stack.name}' kept changing while the policy guard read them")


def refusal(stack: str, action: str, result: Verdict) -> PolicyRefused:
    """The error a refused call returns: every violation on its own line, and who can relax it."""
    lines = [
        f"the policy guard refuses to {action} stack '{stack}': its compose files break "
        f"{len(result.rules)} rule(s) ({', '.join(result.rules)})"
    ]
    lines += [f"- {violation.describe()}" for violation in result.violations]
    lines.append("Only the operator can relax the policy, in config.json; no tool argument or token changes it.")
    return PolicyRefused("\n".join(lines), list(result.violations))
