"""The watchdog's Docker client, speaking an Engine API version negotiated once per connection.

Engine 29 refuses every API version below 1.44, and Engine 20.10 speaks at most 1.41, so no fixed
version serves both. The rule is the docker CLI's (and the gateway's, which the watchdog may not
import): the newest version that both docker-py and the engine know, and never below the engine's
minimum. A client that the engine later refuses (it was upgraded under a running watchdog) is
replaced by a new negotiation; see :func:`version_refused`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import docker
import docker.constants
import docker.errors

from .errors import DockerUnavailable

__all__ = ["connect", "negotiate_version", "version_refused"]

logger = logging.getLogger(__name__)

# What an engine says when it will not speak the version asked for ("client version 1.41 is too old").
_VERSION_REFUSED = "client version"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def negotiate_version(server: Mapping[str, Any], newest_known: str) -> str:
    """The engine's ``ApiVersion`` capped at ``newest_known``, but not below its ``MinAPIVersion``."""
    newest = str(server.get("ApiVersion") or newest_known)
    oldest = str(server.get("MinAPIVersion") or "1.12")
    chosen = min(newest, newest_known, key=_version_tuple)
    return max(chosen, oldest, key=_version_tuple)


def connect(environment: Mapping[str, str] | None = None) -> Any:
    """A docker-py ``DockerClient`` for the engine that ``environment`` names (``DOCKER_HOST``, ...).

    One ``GET /version`` picks the API version; the client then keeps it. ``environment`` None
    means docker-py reads the process environment itself.

    Raises:
        DockerUnavailable: the engine cannot be reached or the environment names no usable engine.
    """
    newest_known = docker.constants.DEFAULT_DOCKER_API_VERSION
    try:
        # A client with an explicit version sends nothing when it is made; this one only asks.
        probe = docker.from_env(version=newest_known, environment=environment)
        try:
            server = probe.api.version(api_version=False)
        finally:
            probe.close()
        version = negotiate_version(server, newest_known)
        client = docker.from_env(version=version, environment=environment)
    except Exception as exc:  # noqa: BLE001 - docker-py lets requests' connection errors through unwrapped
        raise DockerUnavailable(f"cannot reach the Docker engine: {exc}") from exc
    logger.info(
        "event=engine_connected api_version=%s engine_version=%s engine_api=%s-%s",
        version,
        server.get("Version", "?"),
        server.get("MinAPIVersion", "?"),
        server.get("ApiVersion", "?"),
    )
    return client


def version_refused(exc: BaseException) -> bool:
    """True when the engine refused the client's API version: it changed, so negotiate again."""
    return (
        isinstance(exc, docker.errors.APIError)
        and exc.status_code == 400
        and _VERSION_REFUSED in str(exc.explanation or "")
    )
