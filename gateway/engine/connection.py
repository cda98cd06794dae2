"""One engine's connection: its channels, the API version negotiated on it, its deadline and its breaker.

Every Engine API call of the gateway goes through :meth:`Connection.call` (or :meth:`Connection.stream`
for an answer read as it comes): reads, the stack watcher's events, the swarm's calls. So each is
bounded by the endpoint's timeout, fails fast while the engine is degraded (:mod:`gateway.engine.breaker`),
and speaks the version negotiated once per connection: one ``GET /version``, kept until the
connection is lost or the engine refuses that version (an engine upgraded under a running gateway is
then spoken to in its own terms).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio

from ..errors import ConfigError, EngineUnavailable
from .breaker import Breaker, EngineState
from .channels import Connector, SshConnector, TcpConnector, UnixConnector, tls_context
from .endpoint import EngineEndpoint
from .ssh import SshPlan, plan_ssh
from .transport import EngineHTTP, EngineRefused, Response, error_message, request_target

__all__ = [
    "Connection",
    "NEWEST_API_VERSION",
    "VERSION_REFUSED",
    "Query",
    "RAISE",
    "negotiate_version",
]

logger = logging.getLogger(__name__)

#: The newest Engine API version whose answers the gateway reads (docker-py 7's too). Engines that
#: speak newer ones are spoken to in this one, unless it is below their minimum.
NEWEST_API_VERSION = "1.45"
# What an engine says when it will not speak the version asked for ("client version 1.41 is too old").
VERSION_REFUSED = "client version"
#: ``missing=RAISE``: a 404 raises, as any error status (the default).
RAISE: Any = object()
_MAX_ERROR_BODY = 64 * 1024
Query = Mapping[str, str | int | bool | Mapping[str, Any]]


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def negotiate_version(server: Mapping[str, Any], newest_known: str = NEWEST_API_VERSION) -> str:
    """The Engine API version to speak: the newest that both this client and the engine know.

    As the docker CLI does: the engine's ``ApiVersion`` capped at ``newest_known``, but never below
    the engine's ``MinAPIVersion``. Engine 20.10 gives 1.41; Engine 29, which refuses anything below
    1.44, gives ours. An engine whose minimum is newer than ours is still spoken to at that minimum:
    the reads used here have kept their shape.
    """
    newest = str(server.get("ApiVersion") or newest_known)
    oldest = str(server.get("MinAPIVersion") or "1.12")
    chosen = min(newest, newest_known, key=_version_tuple)
    return max(chosen, oldest, key=_version_tuple)


def encode_query(query: Query | None) -> tuple[tuple[str, str], ...]:
    """Query parameters as the engine reads them: booleans as 1/0, filters as JSON, sorted (for caching)."""
    pairs = []
    for key, value in (query or {}).items():
        if isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, Mapping):
            text = json.dumps({k: v if isinstance(v, list) else [v] for k, v in value.items()})
        else:
            text = str(value)
        pairs.append((key, text))
    return tuple(sorted(pairs))


class Connection:
    """An engine's kept channels, its negotiated API version, deadline and breaker. Loop-agnostic."""

    def __init__(self, endpoint: EngineEndpoint, *, name: str = "local", keep: int | None = None) -> None:
        self.endpoint = endpoint
        self.name = name
        self.ssh: SshPlan | None = None
        connector = self._connector(endpoint)
        idle = keep if keep is not None else (4 if self.ssh is not None else 8)
        self.http = EngineHTTP(connector, timeout=endpoint.timeout, keep=idle)
        # The engine the gateway starts with is configured by DOCKER_HOST: say so, it is what to check.
        where = f"DOCKER_HOST={endpoint.docker_host}" if name == "local" else endpoint.docker_host
        self.label = self.http.label = f"'{name}' at {where}" if name != "local" else f"at {where}"
        self.breaker = Breaker(name)
        self._version: str | None = None
        self._on_lost: list[Callable[[], None]] = []

    def _connector(self, endpoint: EngineEndpoint) -> Connector:
        address = endpoint.address
        if address.scheme == "unix":
            return UnixConnector(address.path)
        if address.scheme == "ssh":
            self.ssh = plan_ssh(address, timeout=endpoint.timeout)
            login = f"{address.user}@{address.host}" if address.user else address.host
            port = f" -p {address.port}" if address.port else ""
            hint = f"check that `ssh{port} {login} docker version` works for the gateway's user, without a prompt"
            return SshConnector(self.ssh.argv, endpoint.docker_host, hint=hint)
        context = None
        if endpoint.tls_verify:
            ca, cert, key = endpoint.tls_files()
            try:
                context = tls_context(str(ca), str(cert) if cert else None, str(key) if key else None)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"TLS to {endpoint.docker_host}: cannot load {endpoint.cert_path}: {exc}") from None
        return TcpConnector(address.host, address.port or (2376 if context else 2375), context)

    @property
    def timeout(self) -> float:
        return self.endpoint.timeout

    @property
    def state(self) -> EngineState:
        """Up, or degraded since a failure to reach the engine (and why)."""
        return self.breaker.state

    @property
    def negotiated(self) -> str | None:
        """The version of the current connection, or None when there is none yet."""
        return self._version

    def on_lost(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` whenever the connection is dropped (it is negotiated again)."""
        self._on_lost.append(listener)

    def disconnect(self) -> None:
        """Drop the connection now: the idle channels close and the next call negotiates afresh."""
        self._version = None
        self.http.close()
        for listener in self._on_lost:
            listener()

    def close(self) -> None:
        self._version = None
        self.http.close()
        if self.ssh is not None:
            self.ssh.close()

    async def version(self) -> str:
        """The negotiated API version, negotiating now (one ``GET /version``) if there is none."""
        if self._version is None:
            status, body = await self.http.fetch("GET", "/version")
            if status >= 400:
                raise EngineRefused(status, body[:200].decode("utf-8", "replace"))
            server = json.loads(body)
            self._version = negotiate_version(server)
            logger.info(
                "engine %s: API version %s (engine %s speaks %s to %s)",
                self.name,
                self._version,
                server.get("Version", "?"),
                server.get("MinAPIVersion", "?"),
                server.get("ApiVersion", "?"),
            )
        return self._version

    async def call(
        self, method: str, path: str, query: Query | None = None, body: Any = None, *, versioned: bool = True
    ) -> tuple[int, bytes]:
        """One request, answered whole within the deadline: its status and body.

        Raises:
            EngineUnavailable: the engine cannot be reached or did not answer in time (the engine is
                then degraded), it is degraded already, or it refused this connection's API version.
        """
        trying = self.breaker.admit()
        try:
            prefix = f"/v{await self.version()}" if versioned else ""
            data = None if body is None else json.dumps(_without_nulls(body)).encode()
            status, answer = await self.http.fetch(method, request_target(prefix + path, encode_query(query)), data)
        except EngineUnavailable as exc:
            self._failed(exc)
            raise
        finally:
            self.breaker.settle(trying)
        self.breaker.succeeded()
        if status == 400 and VERSION_REFUSED in answer.decode("utf-8", "replace"):
            self._refused_version(answer)
        return status, answer

    async def json(
        self, method: str, path: str, query: Query | None = None, body: Any = None, *, missing: Any = RAISE
    ) -> Any:
        """The decoded JSON answer of a request (None for an empty one); ``missing`` for a 404 if given.

        Raises:
            EngineUnavailable: see :meth:`call`.
            EngineRefused: the engine answered with an error status (its message is kept).
        """
        status, answer = await self.call(method, path, query, body)
        if status == 404 and missing is not RAISE:
            return missing
        if status >= 400:
            raise EngineRefused(status, error_message(answer))
        return json.loads(answer) if answer else None

    @asynccontextmanager
    async def stream(self, path: str, query: Query | None = None) -> AsyncIterator[Response]:
        """A ``GET`` whose body is read as it comes (logs, events): the head within the deadline, the body after.

        Raises:
            EngineUnavailable: see :meth:`call`.
            EngineRefused: the engine answered with an error status.
        """
        trying = self.breaker.admit()
        async with AsyncExitStack() as stack:
            try:
                with anyio.fail_after(self.timeout):
                    target = request_target(f"/v{await self.version()}{path}", encode_query(query))
                    response = await stack.enter_async_context(self.http.request("GET", target))
            except TimeoutError as exc:
                unavailable = EngineUnavailable(self.http.unreachable(f"no answer within {self.timeout:g} s"))
                self._failed(unavailable)
                raise unavailable from exc
            except EngineUnavailable as exc:
                self._failed(exc)
                raise
            finally:
                self.breaker.settle(trying)
            self.breaker.succeeded()
            if response.status >= 400:
                with anyio.fail_after(self.timeout):
                    answer = await response.read(_MAX_ERROR_BODY)
                if response.status == 400 and VERSION_REFUSED in answer.decode("utf-8", "replace"):
                    self._refused_version(answer)
                raise EngineRefused(response.status, error_message(answer))
            yield response

    async def ping(self) -> None:
        """``GET /_ping``: the engine answers.

        Raises:
            EngineUnavailable: it does not (or is degraded).
            EngineRefused: it answered with an error status.
        """
        status, answer = await self.call("GET", "/_ping", versioned=False)
        if status >= 400:
            raise EngineRefused(status, error_message(answer))

    def _failed(self, exc: EngineUnavailable) -> None:
        if self.breaker.failed(str(exc)):
            logger.warning("engine %s degraded: %s", self.name, exc)
        self.disconnect()

    def _refused_version(self, answer: bytes) -> None:
        # The engine changed under us (an upgrade); negotiate again on the next call.
        self.disconnect()
        raise EngineUnavailable(
            f"the Docker engine {self.label} refused this connection's API version ({error_message(answer)}); "
            "it is negotiated again on the next call, so retry"
        )


def _without_nulls(body: Any) -> Any:
    # The engine's Go decoder cannot take null for a string; a missing key means the same.
    return {key: value for key, value in body.items() if value is not None} if isinstance(body, dict) else body
