"""The policy guard at work: judge a stack before anything is created or shown, and mark stacks cheaply.

:meth:`PolicyGuard.evaluate` runs in three steps, and the order is the point:

1. one strict reading of the stack's files (:mod:`gateway.policy.reader`): YAML the guard and
   Compose could read two ways, a budget exceeded, or a control character, and nothing runs;
2. the file references alone (:func:`gateway.policy.judge.judge_references`): a reference outside
   the folder is refused here, before Compose runs and reads it;
3. Compose's own model with every profile enabled (``--profile '*'``), walked against the allowlist
   (:func:`gateway.policy.judge.judge_model`).

A verdict is kept with the model and reading it was judged on and what it depended on: the
signature (inode, size, mtime, ctime) of every file read, taken on the descriptor the bytes came
from, and where every judged host path resolved. This is the gateway's one cache of a stack's files:
``up``, ``config`` and ``plan`` reuse an *allowed* verdict only after checking all of that afresh (a
few stat calls instead of a Compose run); ``list_stacks`` and ``ps`` marks also trust it for
:data:`MARK_TTL_S`, unless :meth:`PolicyGuard.forget` said the stack changed.

Compose then runs the judged model itself, never the files (:mod:`gateway.compose.runfile`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio import to_thread

from ..compose.cli import ComposeCli
from ..errors import ComposeFailed, GatewayError
from ..models import Verdict
from ..secretrefs import EXTENSION_KEY, bound, check_names, placeholders
from ..stacks import Stack
from .findings import Context, OwnerLookup
from .judge import Judgement, judge_model, judge_references
from .reader import Reading, read_stack
from .rules import Policy, refusal, runtime_sockets

__all__ = ["PolicyGuard", "Evaluation", "refusal"]

logger = logging.getLogger(__name__)

# How long a mark is trusted without re-checking what it depends on (as the defined-services cache).
MARK_TTL_S = 30.0
# Refusals that rest on the engine's resources or the stacks beside a stack, not on its files alone.
_NEIGHBOURHOOD_RULES = frozenset({"external_volumes", "external_networks", "external_secrets", "namespace"})
# Cold marks run Compose once per stack; this many at a time, so a long list does not swamp the host.
MARK_CONCURRENCY = 4

# (path, inode, size, mtime, ctime): ctime too, since a writer can set mtime back but not ctime.
Signature = tuple[tuple[str, int, int, int, int], ...]
# (path, where it resolves, device and inode of the target or -1): a swapped symlink shows here.
Resolution = tuple[tuple[str, str, int, int], ...]


@dataclass(frozen=True)
class Evaluation:
    """A verdict, the all-profiles model it was judged on (empty when Compose did not run), and the
    reading it was judged from (None when the files could not be read)."""

    verdict: Verdict
    model: dict[str, Any]
    reading: Reading | None = None
    # Why the verdict could not be reached, when it could not (e.g. control_characters).
    error_code: str | None = None
    # True when a kept verdict (and its model and reading) was reused: nothing it depended on changed.
    reused: bool = False
    # The error that kept the stack from being judged at all (a mark's error verdict says it in one line).
    failure: GatewayError | None = None
    secret_names: tuple[str, ...] = ()  # the secrets its model takes from Vault (gateway.secretrefs)

    @property
    def profiles(self) -> tuple[str, ...]:
        """The profiles the stack's ``.env`` turns on: the judged model runs with these."""
        return self.reading.profiles if self.reading is not None else ()


@dataclass
class _Judged:
    compose_file: Path
    signature: Signature
    resolution: Resolution
    checked: float
    evaluation: Evaluation

    def reusable(self) -> bool:
        """An allowed verdict, or a refusal that rests on the files alone (a caller repeating a refused
        ``up`` does not run Compose each time); not a refusal that rests on the engine or the stacks
        beside it (a volume another project owns may be gone by now), nor a stack that could not be
        judged (its error is raised again, afresh)."""
        verdict = self.evaluation.verdict
        if self.evaluation.failure is not None or verdict.error:
            return False
        return verdict.allowed or not set(verdict.rules) & _NEIGHBOURHOOD_RULES


def _signature_of(reading: Reading) -> Signature:
    """The files' signatures as the reader took them, on the descriptors their bytes came from."""
    read = [(str(f.path), *f.signature) for f in reading.files]
    return tuple(read + [(str(path), -1, -1, -1, -1) for path in reading.absent])


def _signature(paths: Iterable[str]) -> Signature:
    parts = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            parts.append((path, -1, -1, -1, -1))
            continue
        parts.append((path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
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
        and _signature(path for path, *_ in judged.signature) == judged.signature
        and _resolution(path for path, *_ in judged.resolution) == judged.resolution
    )


_STACK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class PolicyGuard:
    """Judges stacks against one :class:`~gateway.policy.rules.Policy` (the operator's, read at start-up).

    ``self_project`` (the gateway's own compose project) and ``owners`` (who owns an existing engine
    resource, see :data:`~gateway.policy.findings.OwnerLookup`) make the judge refuse another
    project's names and resources; ``projects`` adds the compose projects running on the engine to
    the stack folders as neighbours. All three may be set after construction.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        docker_host: str | None = None,
        sockets: Sequence[str] | None = None,
        self_project: str | None = None,
        owners: OwnerLookup | None = None,
        projects: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.policy = policy
        self.sockets = tuple(sockets) if sockets is not None else runtime_sockets(docker_host)
        self.self_project = self_project
        self.owners = owners
        self.projects = projects
        self._judged: dict[str, _Judged] = {}
        self._folders: tuple[Path, int, frozenset[str]] | None = None
        # Marks are computed in worker threads (see mark); these bound them and keep one per stack.
        self._slots = threading.BoundedSemaphore(MARK_CONCURRENCY)
        self._threads_lock = threading.Lock()
        self._stack_locks: dict[str, threading.Lock] = {}

    def context(self, stack: Stack, *, swarm: bool = False) -> Context:
        """What the judge needs beside the files (blocking: lists the stacks dir when it changed)."""
        assert stack.folder is not None
        neighbours = set(self._stack_folders(stack.folder.parent))
        if self.projects is not None:
            neighbours.update(self.projects())
        neighbours.discard(stack.name)
        return Context(
            stack.name,
            stack.folder,
            self.policy,
            self.sockets,
            frozenset(neighbours),
            self.self_project,
            self.owners,
            swarm,
        )

    def read(self, stack: Stack, *, source: Path | None = None, env_file: Path | None = None) -> Reading:
        """One strict reading of the stack's files; with ``source``, of that compose file (and ``env_file``)
        read as if they sat in the stack's folder. Blocking.

        Raises:
            ReadRefused: the files cannot be read the one strict way (see :mod:`gateway.policy.reader`).
            Unloadable: a compose file that is not valid YAML, or is missing.
        """
        assert stack.folder is not None and stack.compose_file is not None
        sources: dict[Path, bytes] = {}
        if source is not None:
            sources[stack.compose_file] = source.read_bytes()
            sources[stack.folder / ".env"] = env_file.read_bytes() if env_file is not None else b""
        return read_stack(stack.folder, [stack.compose_file], sources=sources)

    def _read_in_context(self, stack: Stack, source: Path | None, env_file: Path | None) -> tuple[Reading, Context]:
        return self.read(stack, source=source, env_file=env_file), self.context(stack)

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
            PolicyViolation: files the guard cannot read strictly (``ReadRefused``, with its code).
            InvalidInput: a secret name that cannot be one, or a secret used outside a service's
                environment (see :func:`gateway.secretrefs.bind`).
        """
        assert stack.folder is not None and stack.compose_file is not None
        folder = stack.folder
        reading, context = await to_thread.run_sync(partial(self._read_in_context, stack, source, env_file))

        def keep(judgement: Judgement, model: dict[str, Any], secret_names: tuple[str, ...] = ()) -> Evaluation:
            evaluation = Evaluation(judgement.verdict, model, reading, judgement.error_code, secret_names=secret_names)
            if source is None:
                self._remember(stack, reading, judgement, evaluation)
            return evaluation

        early = judge_references(reading, context)
        if not early.allowed:
            # Compose would read these files while loading: stop before it runs.
            return keep(early, {})
        # Secrets from Vault are judged where they go, never with their values (gateway.secretrefs).
        stand_ins = placeholders(check_names(reading.secret_names))
        output = await cli.run(
            stack.name,
            ["config", "--format", "json"],
            compose_file=source or stack.compose_file,
            cwd=folder if source is None else source.parent,
            profiles=["*"],
            project_directory=None if source is None else folder,
            env_file=env_file,
            extra_env=stand_ins,
        )
        try:
            model: dict[str, Any] = json.loads(output.stdout)
        except json.JSONDecodeError as exc:
            raise GatewayError(f"docker compose config printed something that is not JSON: {exc}") from exc
        if not isinstance(model, dict):
            raise GatewayError("docker compose config printed JSON that is not an object")
        model, secret_names = bound(model, stand_ins)  # a malformed reference is refused here
        extension = model.get(EXTENSION_KEY)
        if isinstance(extension, dict) and extension.get("target") == "swarm":
            context = replace(context, swarm=True)
        judgement = await to_thread.run_sync(judge_model, reading, model, context)
        return keep(judgement, model, secret_names)

    async def current(self, stack: Stack, cli: ComposeCli) -> Evaluation:
        """The stack as its files are now: a verdict kept from before when nothing it depended on changed
        (checked now, file by file and path by path; ``reused``; see ``_Judged.reusable``), else judged afresh.

        Raises:
            PolicyViolation, ComposeFailed: as :meth:`evaluate` (the stack cannot be judged).
        """
        judged = self._judged.get(stack.name)
        if judged is not None and judged.reusable():
            if await to_thread.run_sync(_still_holds, judged, stack):
                judged.checked = time.monotonic()
                return replace(judged.evaluation, reused=True)
        return await self.evaluate(stack, cli)

    async def enforce(self, stack: Stack, cli: ComposeCli, action: str, *, fresh: bool = False) -> Evaluation:
        """Refuse ``action`` unless the policy allows ``stack`` as its files are now (see :meth:`current`);
        ``fresh`` always runs Compose.

        Raises:
            PolicyRefused: naming each rule, service, value and the config.json key that would allow it.
            PolicyViolation, ComposeFailed: as :meth:`evaluate`.
        """
        evaluation = await (self.evaluate(stack, cli) if fresh else self.current(stack, cli))
        if not evaluation.verdict.allowed:
            raise refusal(stack.name, action, evaluation.verdict)
        return evaluation

    def trusted(self, name: str) -> Evaluation | None:
        """The kept evaluation of stack ``name`` while a mark may trust it unchecked (:data:`MARK_TTL_S`)."""
        judged = self._judged.get(name)
        if judged is not None and time.monotonic() - judged.checked < MARK_TTL_S:
            return judged.evaluation
        return None

    async def mark(self, stack: Stack, cli: ComposeCli) -> Verdict:
        """The verdict ``up`` would reach, cached; never raises (see :meth:`marked`)."""
        return (await self.marked(stack, cli)).verdict

    async def marked(self, stack: Stack, cli: ComposeCli) -> Evaluation:
        """The evaluation behind a mark: kept (trusted for :data:`MARK_TTL_S`, then while its files
        hold), or judged now; never raises: a stack that cannot be judged gets an error verdict.

        A mark that must be computed is computed in a worker thread that outlives this call: a
        listing that stops waiting (see ``reads.MARK_BUDGET_S``) leaves it running, and the next
        call finds its result instead of starting over.
        """
        assert stack.folder is not None
        now = time.monotonic()
        judged = self._judged.get(stack.name)
        if judged is not None and now - judged.checked < MARK_TTL_S:
            return judged.evaluation
        if judged is not None and await to_thread.run_sync(_still_holds, judged, stack):
            judged.checked = now
            return judged.evaluation
        return await to_thread.run_sync(self._mark_now, stack, cli, now, abandon_on_cancel=True)

    def _mark_now(self, stack: Stack, cli: ComposeCli, asked: float) -> Evaluation:
        """Judge ``stack`` in this worker thread, unless another thread judged it since ``asked``."""
        with self._threads_lock:
            lock = self._stack_locks.setdefault(stack.name, threading.Lock())
        with lock:
            judged = self._judged.get(stack.name)
            if judged is not None and judged.checked >= asked:
                return judged.evaluation
            with self._slots:
                try:
                    # A loop of this thread's own: the caller's may have stopped waiting for it.
                    return anyio.run(self.evaluate, stack, cli)
                except Exception as exc:  # noqa: BLE001 - whatever fails, it is this stack's mark, not the listing's
                    if isinstance(exc, GatewayError):
                        reason = _one_line(exc)
                        logger.info("policy guard cannot judge stack %s: %s", stack.name, reason)
                    else:
                        reason = f"the policy guard could not judge this stack ({type(exc).__name__})"
                        logger.warning("policy guard failed on stack %s", stack.name, exc_info=True)
                    failure = exc if isinstance(exc, GatewayError) else GatewayError(reason)
                    evaluation = Evaluation(
                        Verdict(allowed=False, error=reason), {}, error_code=getattr(exc, "code", None), failure=failure
                    )
                    # Kept like a verdict, so a broken stack is not re-run through Compose on every listing.
                    assert stack.folder is not None and stack.compose_file is not None
                    files = [str(stack.compose_file), str(stack.folder / ".env")]
                    self._judged[stack.name] = _Judged(
                        stack.compose_file, _signature(files), (), time.monotonic(), evaluation
                    )
                    return evaluation

    def forget(self, name: str) -> None:
        """Trust the kept verdict no longer: its next use checks its files afresh (a few ``stat`` calls),
        and judges again if they changed. For :meth:`gateway.catalog.StackCatalog.stack_changed`."""
        judged = self._judged.get(name)
        if judged is not None:
            judged.checked = float("-inf")

    def _remember(self, stack: Stack, reading: Reading, judgement: Judgement, evaluation: Evaluation) -> None:
        assert stack.compose_file is not None
        self._judged[stack.name] = _Judged(
            stack.compose_file,
            _signature_of(reading),
            _resolution(judgement.resolved),
            time.monotonic(),
            evaluation,
        )

    def _stack_folders(self, stacks_dir: Path) -> frozenset[str]:
        """The stack folders beside this one (cached while the stacks dir's mtime holds)."""
        try:
            mtime = os.stat(stacks_dir).st_mtime_ns
        except OSError:
            return frozenset()
        cached = self._folders
        if cached is not None and cached[0] == stacks_dir and cached[1] == mtime:
            return cached[2]
        try:
            names = frozenset(e.name for e in os.scandir(stacks_dir) if _STACK_NAME.fullmatch(e.name) and e.is_dir())
        except OSError:
            names = frozenset()
        self._folders = (stacks_dir, mtime, names)
        return names


def _one_line(exc: GatewayError) -> str:
    """A failure as one line for a mark: its first line, and Compose's own last word if it has one."""
    lines = str(exc).splitlines() or [type(exc).__name__]
    if isinstance(exc, ComposeFailed) and exc.stderr_tail.strip():
        last = exc.stderr_tail.strip().splitlines()[-1]
        return lines[0] if last in lines[0] else f"{lines[0]} {last}"
    return lines[0]
