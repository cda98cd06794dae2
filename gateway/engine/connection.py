"""The Engine API connection through docker-py: negotiated once, dropped when lost, errors translated.

The reads in :mod:`gateway.engine.client` and the swarm's calls go through one :class:`Connection`
per engine. The API version is negotiated once per connection (one ``GET /version``) and kept with
the client; a lost connection or a refused version drops the client, so the next call negotiates
again (an engine upgraded under a running gateway is spoken to in its own terms). docker-py,
requests and urllib3 errors become :mod:`gateway.errors` here and nowhere else.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import EngineUnavailable, GatewayError

if TYPE_CHECKING:
    import docker

__all__ = ["Connection", "DEFAULT_DOCKER_HOST", "VERSION_REFUSED", "negotiate_version", "not_found", "explanation"]

logger = logging.getLogger(__name__)

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
# What an engine says when it will not speak the version asked for ("client version 1.41 is too old").
VERSION_REFUSED = "client version"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def negotiate_version(server: Mapping[str, Any], newest_known: str) -> str:
    """The Engine API version to speak: the newest that both this client and the engine know.

    As the docker CLI does: the engine's ``ApiVersion`` capped at ``newest_known`` (docker-py's own
    default), but never below the engine's ``MinAPIVersion``. Engine 20.10 gives 1.41; Engine 29,
    which refuses anything below 1.44, gives docker-py's newest. An engine whose minimum is newer
    than docker-py is still spoken to at that minimum: the reads used here have kept their shape.
    """
    newest = str(server.get("ApiVersion") or newest_known)
    oldest = str(server.get("MinAPIVersion") or "1.12")
    chosen = min(newest, newest_known, key=_version_tuple)
    return max(chosen, oldest, key=_version_tuple)


class Connection:
    """One engine's docker-py client, thread-safe, created on first use."""

    def __init__(self, docker_host: str, *, timeout: float) -> None:
        self.docker_host = docker_host
        self.timeout = timeout
        self._client: docker.APIClient | None = None
        # Re-entrant: a failure while connecting (under the lock) disconnects, which takes it again.
        self._client_lock = threading.RLock()
        self._on_lost: list[Callable[[], None]] = []

    @property
    def client(self) -> docker.APIClient:
        # Created on first use, so an engine that is down at start-up is reported per call, not fatally.
        with self._client_lock:
            if self._client is None:
                with self._translate():
                    self._client = self._connect()
            return self._client

    def _connect(self) -> docker.APIClient:
        # Imported on first use: docker-py (with requests) is a tenth of the start-up time.
        import docker

        newest_known = docker.constants.DEFAULT_DOCKER_API_VERSION
        # A client with an explicit version makes no request when it is created; this one only asks.
        probe = docker.APIClient(base_url=self.docker_host, timeout=self.timeout, version=newest_known)
        try:
            server = probe.version(api_version=False)
        finally:
            probe.close()
        version = negotiate_version(server, newest_known)
        logger.info(
            "engine API version %s (engine %s speaks %s to %s)",
            version,
            server.get("Version", "?"),
            server.get("MinAPIVersion", "?"),
            server.get("ApiVersion", "?"),
        )
        return docker.APIClient(base_url=self.docker_host, timeout=self.timeout, version=version)

    @property
    def api_version(self) -> str:
        """The negotiated Engine API version (negotiating now if there is no connection yet)."""
        return str(self.client.api_version)

    @property
    def negotiated(self) -> str | None:
        """The version of the current connection, or None when there is none (negotiating would block)."""
        client = self._client
        return None if client is None else str(client.api_version)

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def translate(self) -> AbstractContextManager[None]:
        """A context that turns docker-py errors into gateway errors, for callers of :attr:`client`."""
        return self._translate()

    def _disconnect(self) -> None:
        """Forget the connection and its negotiated version; the next call starts afresh."""
        self.close()
        for listener in self._on_lost:
            listener()

    def on_lost(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` whenever the connection is dropped (it is negotiated again)."""
        self._on_lost.append(listener)

    def disconnect(self) -> None:
        """Drop the connection now: the next call negotiates afresh."""
        self._disconnect()

    @contextmanager
    def _translate(self) -> Iterator[None]:
        import docker.errors
        import requests.exceptions
        import urllib3.exceptions

        if self.docker_host.startswith("unix://") and not os.path.exists(self.docker_host[len("unix://") :]):
            # Said up front: clearer than a connection error, and docker-py would leak the socket it tried.
            raise EngineUnavailable(self._unreachable(FileNotFoundError("the socket file does not exist")))
        try:
            yield
        except GatewayError:
            raise
        except (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            # The engine went away or stalled in the middle of a streamed answer read block by block.
            requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.HTTPError,
        ) as exc:
            self._disconnect()
            raise EngineUnavailable(self._unreachable(exc)) from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 400 and VERSION_REFUSED in str(exc.explanation or ""):
                # The engine changed under us (an upgrade); negotiate again on the next call.
                self._disconnect()
                raise EngineUnavailable(
                    f"the Docker engine refused this connection's API version ({exc.explanation}); "
                    "it is negotiated again on the next call, so retry"
                ) from exc
            raise GatewayError(f"Docker engine error: {exc}") from exc
        except docker.errors.DockerException as exc:
            text = str(exc)
            if "Connection" in text or "No such file" in text:
                self._disconnect()
                raise EngineUnavailable(self._unreachable(exc)) from exc
            raise GatewayError(f"Docker engine error: {text}") from exc

    def _unreachable(self, exc: BaseException) -> str:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        return (
            f"cannot reach the Docker engine at DOCKER_HOST={self.docker_host} ({reason}); "
            "check that dockerd is running and that this process may open its socket"
        )


def explanation(response: Any) -> str:
    try:
        return str(response.json().get("message", ""))[:300]
    except ValueError:
        return str(response.text)[:300]


def not_found() -> type[Exception]:
    import docker.errors

    return docker.errors.NotFound  # type: ignore[no-any-return]
