"""The docker CLI, for the two Swarm commands that have no Engine API equivalent worth re-writing.

``docker stack deploy`` turns a stack file into networks, secrets, configs and services, and
``docker stack rm`` removes them. Everything else about Swarm goes through the Engine API.
The CLI's stdout lines ("Creating service shop_web") become progress events.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections import deque
from collections.abc import Mapping, Sequence

import anyio
from anyio.abc import Process

from ..compose.cli import ProgressCallback, compose_environment
from ..compose.process import DEFAULT_BUDGET, Budget, budget_exceeded, open_child, stop_child
from ..errors import SwarmFailed, SwarmUnavailable

__all__ = ["DockerCli", "locate_docker"]

logger = logging.getLogger(__name__)

_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_TAIL_LINES = 20
# Lines the CLI prints that say nothing about this deploy (the gateway waits on its own terms).
_NOISE = ("Since --detach=false was not specified", "In a future release, --detach=false")


def locate_docker(docker_bin: str | None, env: Mapping[str, str]) -> tuple[str, tuple[int, int]]:
    """The docker CLI (``DOCKER_BIN`` or ``docker`` on PATH) and its version, read without the engine.

    Raises:
        SwarmUnavailable: no docker CLI, saying how to provide one.
    """
    path = docker_bin or shutil.which("docker", path=env.get("PATH"))
    if path:
        try:
            done = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=20, env=dict(env), check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            done = None
        match = _VERSION_RE.search(done.stdout) if done is not None and done.returncode == 0 else None
        if match:
            return path, (int(match.group(1)), int(match.group(2)))
    where = f"DOCKER_BIN={docker_bin} is not a working docker CLI" if docker_bin else "no docker CLI on PATH"
    raise SwarmUnavailable(
        f"{where}; swarm stacks are deployed with `docker stack deploy`: install the docker CLI "
        "(static binary or your distribution's package) beside the gateway, or set DOCKER_BIN"
    )


class DockerCli:
    """Runs ``docker stack ...`` commands, one at a time per stack (the caller holds the stack's lock)."""

    def __init__(
        self,
        path: str,
        version: tuple[int, int],
        env: Mapping[str, str],
        *,
        timeout: float = 900.0,
        budget: Budget = DEFAULT_BUDGET,
    ) -> None:
        self.path = path
        self.version = version
        # The same environment the Compose CLI gets: the allowlist (PATH, HOME, the DOCKER_* connection
        # variables), so no token, no other variable of the gateway, nothing that steers which files load.
        self.env = compose_environment(env)
        self.env["DOCKER_CLI_HINTS"] = "false"
        self.timeout = timeout
        self.budget = budget

    @classmethod
    def locate(cls, docker_bin: str | None, env: Mapping[str, str], *, budget: Budget = DEFAULT_BUDGET) -> DockerCli:
        path, version = locate_docker(docker_bin, env)
        logger.info("using the docker CLI %d.%d for swarm stacks: %s", version[0], version[1], path)
        return cls(path, version, env, budget=budget)

    @property
    def detach_flag(self) -> list[str]:
        """``--detach`` where the CLI knows it (26.0 and later): the gateway waits on its own terms."""
        return ["--detach"] if self.version >= (26, 0) else []

    async def run(
        self,
        args: Sequence[str],
        *,
        stdin: bytes | None = None,
        progress: ProgressCallback | None = None,
        events: list[str] | None = None,
    ) -> None:
        """Run one docker command to completion, each output line an event.

        Raises:
            SwarmFailed: non-zero exit or a timeout, with the CLI's last lines.
        """
        argv = [self.path, *args]
        logger.debug("running %s", argv)
        tail: deque[str] = deque(maxlen=_TAIL_LINES)
        process = await open_child(
            argv,
            env=self.env,
            budget=self.budget,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            with anyio.fail_after(self.timeout):
                if stdin is not None:
                    assert process.stdin is not None
                    await process.stdin.send(stdin)
                    await process.stdin.aclose()
                await _read_lines(process, tail, progress, events)
                returncode = await process.wait()
        except TimeoutError as exc:
            command = " ".join(args[:2])
            raise SwarmFailed(f"docker {command} timed out after {self.timeout:.0f}s and was stopped") from exc
        finally:
            await stop_child(process)
        if returncode != 0:
            detail = "\n".join(tail) or "(no output)"
            why = budget_exceeded(returncode, detail, self.budget)
            reason = f"; {why}" if why else ""
            raise SwarmFailed(f"docker {' '.join(args[:2])} failed (exit {returncode}){reason}:\n{detail}")


async def _read_lines(
    process: Process, tail: deque[str], progress: ProgressCallback | None, events: list[str] | None
) -> None:
    assert process.stdout is not None
    buffer = b""

    async def emit(raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").strip()
        if not line or line.startswith(_NOISE):
            return
        tail.append(line)
        if events is not None:
            events.append(line)
        if progress is not None:
            await progress(line)

    async for chunk in process.stdout:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            await emit(raw)
    await emit(buffer)
