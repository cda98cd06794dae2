"""Stack lifecycle through the Compose v2 CLI, the reference implementation of the Compose spec.

The CLI runs with ``--progress json``: every event it prints on stderr is handed to a progress
callback (the MCP server turns them into progress notifications). Cancelling the awaiting task
stops the child process. How the child runs (its session, budget, and end) is
:mod:`gateway.compose.process`'s.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import Process

from ..errors import ComposeFailed, InvalidInput
from .process import DEFAULT_BUDGET, Budget, budget_exceeded, open_child, stop_child

__all__ = [
    "ComposeCli",
    "ComposeOutput",
    "EventLog",
    "ProgressCallback",
    "compose_environment",
    "BASE_ENV",
    "CONNECTION_ENV",
    "FIXED_ENV",
    "SECRET_ENV",
    "STEERING_ENV",
]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str], Awaitable[None]]

# Compose gets an allowlisted environment, never the gateway's own: a compose file can interpolate
# any variable Compose sees into `config` output and into containers (`${AWS_SECRET_ACCESS_KEY}`,
# or a bare `environment: [GITHUB_TOKEN]`). A stack's own variables come from the .env in its folder.
BASE_ENV = ("PATH", "HOME")
# How Compose reaches the engine; nothing else of DOCKER_* (DOCKER_API_VERSION would pin the API).
CONNECTION_ENV = (
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "DOCKER_TLS",
)
# Never handed to the CLI, not even when the operator lists them in policy.pass_env.
SECRET_ENV = frozenset(
    {
        "COMPOSE_AGENT_TOKEN",
        "STATUS_PANEL_TOKEN",
        "VAULT_TOKEN",
        "STATUS_PANEL_PASSWORD",
        "STATUS_PANEL_SESSION_SECRET",
    }
)
# They would make Compose load some other model than the stack's own.
STEERING_ENV = frozenset(
    {"COMPOSE_FILE", "COMPOSE_PROFILES", "COMPOSE_ENV_FILES", "COMPOSE_PROJECT_NAME", "COMPOSE_PATH_SEPARATOR"}
)
# Set on every run: Compose must not fetch a compose file from a git repository or an OCI registry.
FIXED_ENV = {"COMPOSE_EXPERIMENTAL_GIT_REMOTE": "0", "COMPOSE_EXPERIMENTAL_OCI_REMOTE": "0"}
# A folder-less project runs here: Compose looks for a compose file in the working directory and
# its parents, and "/" has none, so it falls back to the project's containers.
NEUTRAL_CWD = Path("/")
STDERR_TAIL_LINES = 20


def compose_environment(environ: Mapping[str, str], pass_env: Sequence[str] = ()) -> dict[str, str]:
    """The environment the Compose CLI runs with: ``PATH``, ``HOME``, the ``DOCKER_*`` connection
    variables, and the names the operator lists in ``policy.pass_env``; never a secret or steering one;
    and :data:`FIXED_ENV`, which turns Compose's remote loaders off whatever else says."""
    names = (*BASE_ENV, *CONNECTION_ENV, *pass_env)
    env = {
        name: environ[name]
        for name in dict.fromkeys(names)
        if name in environ and name not in SECRET_ENV and name not in STEERING_ENV
    }
    return {**env, **FIXED_ENV}


class EventLog:
    """Compose's events of one call: kept for its result, and passed on to the caller's progress."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.lines: list[str] = []
        self._progress = progress

    async def __call__(self, text: str) -> None:
        self.lines.append(text)
        if self._progress is not None:
            await self._progress(text)


@dataclass
class ComposeOutput:
    """What a finished CLI run printed."""

    stdout: str
    events: list[str] = field(default_factory=list)


def describe_event(event: dict[str, object]) -> str | None:
    """One progress event as a short line, e.g. ``Container shop-web-1: Started``."""
    if event.get("error"):
        return f"error: {event.get('message', '')}"
    if "id" in event and "status" in event:
        text = f"{event['id']}: {event['status']}"
        if event.get("text"):
            text += f" ({event['text']})"
        return text
    if "msg" in event:
        return f"{event.get('level', 'info')}: {event['msg']}"
    if "message" in event:
        return str(event["message"])
    return None


class ComposeCli:
    """Runs ``docker compose`` for one project at a time."""

    def __init__(
        self,
        argv: Sequence[str],
        version: str,
        env: Mapping[str, str],
        *,
        pass_env: Sequence[str] = (),
        timeout: float = 900.0,
        budget: Budget = DEFAULT_BUDGET,
    ) -> None:
        """``env`` is the gateway's environment; the CLI sees only :func:`compose_environment` of it.

        Each run may take ``timeout`` seconds of wall-clock time, and ``budget`` of memory and CPU.
        """
        self.argv = list(argv)
        self.version = version
        self.env = compose_environment(env, pass_env)
        self.timeout = timeout
        self.budget = budget

    @classmethod
    def locate(
        cls,
        compose_bin: str | None,
        env: Mapping[str, str],
        pass_env: Sequence[str] = (),
        *,
        budget: Budget = DEFAULT_BUDGET,
    ) -> ComposeCli:
        """Find the Compose CLI (see :func:`locate_compose`), asking it for its version with the allowlisted env."""
        from .locate import locate_compose  # the search needs this class's environment rules first

        allowed = compose_environment(env, pass_env)
        argv, version = locate_compose(compose_bin, allowed)
        logger.info("using Docker Compose %s: %s", version, " ".join(argv))
        return cls(argv, version, env, pass_env=pass_env, budget=budget)

    def command(
        self,
        project: str,
        compose_file: Path | None,
        args: Sequence[str],
        *,
        profiles: Sequence[str] = (),
        project_directory: Path | None = None,
        env_file: Path | None = None,
    ) -> list[str]:
        argv = [*self.argv, "--progress", "json", "--project-name", project]
        if compose_file is not None:
            argv += ["--file", str(compose_file)]
        for profile in profiles:
            argv += ["--profile", profile]
        # A candidate file in a scratch folder is read as if it sat in the stack's own folder.
        if project_directory is not None:
            argv += ["--project-directory", str(project_directory)]
        if env_file is not None:
            argv += ["--env-file", str(env_file)]
        return argv + list(args)

    async def run(
        self,
        project: str,
        args: Sequence[str],
        *,
        compose_file: Path | None = None,
        cwd: Path | None = None,
        progress: ProgressCallback | None = None,
        profiles: Sequence[str] = (),
        project_directory: Path | None = None,
        env_file: Path | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> ComposeOutput:
        """Run one compose command to completion, streaming its events to ``progress``.

        ``project_directory`` and ``env_file`` make Compose read ``compose_file`` as if it were the
        stack's own: relative paths and the ``.env`` resolve there (or in ``env_file``). ``extra_env``
        adds variables to this run's environment alone (a stack's secrets, in memory only).

        Raises:
            ComposeFailed: non-zero exit, with the last lines of stderr; or a timeout.
            InvalidInput: a name of ``extra_env`` that the allowlisted environment already holds.
        """
        env = self.env
        if extra_env:
            taken = sorted(set(extra_env) & (set(env) | SECRET_ENV | STEERING_ENV))
            if taken:
                raise InvalidInput(
                    f"the stack's secret(s) {', '.join(taken)} would replace a variable Compose runs with "
                    "(PATH, HOME, the DOCKER_* connection or policy.pass_env); give the secret another name"
                )
            env = {**env, **extra_env}
        argv = self.command(
            project,
            compose_file,
            args,
            profiles=profiles,
            project_directory=project_directory,
            env_file=env_file,
        )
        logger.debug("running %s", argv)
        events: list[str] = []
        tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        stdout_chunks: list[bytes] = []
        process = await open_child(argv, env=env, budget=self.budget, cwd=cwd or NEUTRAL_CWD)
        try:
            with anyio.fail_after(self.timeout):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_drain, process, stdout_chunks)
                    await self._read_events(process, events, tail, progress)
                returncode = await process.wait()
        except TimeoutError as exc:
            raise ComposeFailed(
                f"docker compose {args[0]} on '{project}' timed out after {self.timeout:.0f}s and was stopped",
                stderr_tail="\n".join(tail),
            ) from exc
        finally:
            await stop_child(process)
        if returncode != 0:
            detail = "\n".join(tail) or "(no output)"
            # Every line: Go names an exhausted budget first, then prints a long stack.
            why = budget_exceeded(returncode, "\n".join(events), self.budget)
            raise ComposeFailed(
                f"docker compose {args[0]} on '{project}' failed (exit {returncode})"
                + (f"; {why}" if why else "")
                + f":\n{detail}",
                returncode=returncode,
                stderr_tail=detail,
            )
        return ComposeOutput(stdout=b"".join(stdout_chunks).decode("utf-8", "replace"), events=events)

    async def _read_events(
        self, process: Process, events: list[str], tail: deque[str], progress: ProgressCallback | None
    ) -> None:
        assert process.stderr is not None
        buffer = b""
        async for chunk in process.stderr:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                await self._handle_line(raw.decode("utf-8", "replace").strip(), events, tail, progress)
        if buffer.strip():
            await self._handle_line(buffer.decode("utf-8", "replace").strip(), events, tail, progress)

    @staticmethod
    async def _handle_line(line: str, events: list[str], tail: deque[str], progress: ProgressCallback | None) -> None:
        if not line:
            return
        text: str | None = line
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
            if isinstance(event, dict):
                text = describe_event(event)
                if event.get("error") or event.get("level") in ("warning", "error"):
                    tail.append(text or line)
        else:
            tail.append(line)
        if text is None:
            return
        events.append(text)
        if progress is not None:
            await progress(text)


async def _drain(process: Process, chunks: list[bytes]) -> None:
    assert process.stdout is not None
    async for chunk in process.stdout:
        chunks.append(chunk)
