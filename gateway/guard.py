"""The policy guard at work: judge a stack before anything is created or shown, and mark stacks cheaply.

:meth:`PolicyGuard.evaluate` runs in two steps, and the order is the point:

1. the raw file references (:mod:`gateway.references`): a reference outside the stack folder is
   refused here, before Compose runs and reads it;
2. Compose's own model with every profile enabled (``--profile '*'``), judged by
   :func:`gateway.policy.judge`.

``up`` and ``config`` evaluate afresh on every call. ``list_stacks`` and ``ps`` only *mark* stacks,
from a verdict cached by the signature (mtime, size, inode) of the files that shape the model.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio import to_thread

from .compose import ComposeCli
from .errors import GatewayError, PolicyRefused
from .models import Verdict, Violation
from .policy import Policy, judge, runtime_sockets, verdict
from .references import References, collect_references
from .stacks import Stack

__all__ = ["PolicyGuard", "Evaluation"]

logger = logging.getLogger(__name__)

# How long a mark is trusted without re-checking its files' signature (as the defined-services cache).
MARK_TTL_S = 30.0
# Cold marks run Compose once per stack; this many at a time, so a long list does not swamp the host.
MARK_CONCURRENCY = 4

Signature = tuple[tuple[str, int, int, int], ...]


@dataclass(frozen=True)
class Evaluation:
    """A fresh verdict, and the all-profiles model it was judged on (empty when Compose never ran)."""

    verdict: Verdict
    model: dict[str, Any]


@dataclass
class _Mark:
    files: list[Path]
    signature: Signature
    checked: float
    verdict: Verdict


def _signature(paths: Sequence[Path]) -> Signature:
    parts = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            parts.append((str(path), -1, -1, -1))
            continue
        parts.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(parts)


class PolicyGuard:
    """Judges stacks against one :class:`~gateway.policy.Policy` (the operator's, read at start-up)."""

    def __init__(self, policy: Policy, *, docker_host: str | None = None, sockets: Sequence[str] | None = None) -> None:
        self.policy = policy
        self.sockets = tuple(sockets) if sockets is not None else runtime_sockets(docker_host)
        self._marks: dict[str, _Mark] = {}
        self._limiter = anyio.CapacityLimiter(MARK_CONCURRENCY)

    async def evaluate(self, stack: Stack, cli: ComposeCli) -> Evaluation:
        """Judge ``stack`` now, from its files as they are.

        Raises:
            ComposeFailed: a compose file that is not valid YAML, or a model Compose refuses (its own
                error, from files inside the folder).
            PolicyViolation: a compose file that cannot be read at all.
        """
        assert stack.folder is not None and stack.compose_file is not None
        compose_file, folder = stack.compose_file, stack.folder

        def read() -> tuple[References, Signature]:
            refs = collect_references(compose_file, folder)
            return refs, _signature(refs.files)

        refs, signature = await to_thread.run_sync(read)
        early = self._judge({}, refs, stack)
        if early:
            # Compose would read these files while loading: stop before it runs.
            return self._remember(stack, refs, signature, Evaluation(verdict(early), {}))
        output = await cli.run(
            stack.name,
            ["config", "--format", "json"],
            compose_file=stack.compose_file,
            cwd=stack.folder,
            profiles=["*"],
        )
        try:
            model: dict[str, Any] = json.loads(output.stdout)
        except json.JSONDecodeError as exc:
            raise GatewayError(f"docker compose config printed something that is not JSON: {exc}") from exc
        return self._remember(stack, refs, signature, Evaluation(verdict(self._judge(model, refs, stack)), model))

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
        return self._judge({}, refs, stack)

    async def enforce(self, stack: Stack, cli: ComposeCli, action: str) -> Evaluation:
        """Evaluate ``stack`` and refuse ``action`` unless the policy allows it.

        Raises:
            PolicyRefused: naming each rule, service, value and the config.json key that would allow it.
            PolicyViolation, ComposeFailed: as :meth:`evaluate`.
        """
        evaluation = await self.evaluate(stack, cli)
        if not evaluation.verdict.allowed:
            raise refusal(stack.name, action, evaluation.verdict)
        return evaluation

    async def mark(self, stack: Stack, cli: ComposeCli) -> Verdict:
        """The verdict ``up`` would reach, cached by the files' signature; never raises."""
        assert stack.folder is not None
        now = time.monotonic()
        cached = self._marks.get(stack.name)
        if cached is not None and now - cached.checked < MARK_TTL_S:
            return cached.verdict
        if cached is not None:
            signature = await to_thread.run_sync(_signature, cached.files)
            if signature == cached.signature:
                cached.checked = now
                return cached.verdict
        async with self._limiter:
            try:
                return (await self.evaluate(stack, cli)).verdict
            except GatewayError as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                logger.info("policy guard cannot judge stack %s: %s", stack.name, reason)
                return Verdict(allowed=False, error=reason)

    def forget(self, name: str) -> None:
        """Drop a cached mark, e.g. after a tool rewrote the stack's files."""
        self._marks.pop(name, None)

    def _judge(self, model: dict[str, Any], refs: References, stack: Stack) -> list[Violation]:
        assert stack.folder is not None
        return judge(model, refs.refs, self.policy, stack.name, stack.folder, sockets=self.sockets)

    def _remember(self, stack: Stack, refs: References, signature: Signature, evaluation: Evaluation) -> Evaluation:
        self._marks[stack.name] = _Mark(refs.files, signature, time.monotonic(), evaluation.verdict)
        return evaluation


def refusal(stack: str, action: str, result: Verdict) -> PolicyRefused:
    """The error a refused call returns: every violation on its own line, and who can relax it."""
    lines = [
        f"the policy guard refuses to {action} stack '{stack}': its compose files break "
        f"{len(result.rules)} rule(s) ({', '.join(result.rules)})"
    ]
    lines += [f"- {violation.describe()}" for violation in result.violations]
    lines.append("Only the operator can relax the policy, in config.json; no tool argument or token changes it.")
    return PolicyRefused("\n".join(lines), list(result.violations))
