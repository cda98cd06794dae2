"""The panel's one long-lived MCP session to the compose-agent, over Streamable HTTP.

A background task (:meth:`GatewayClient.run`, started in the app's lifespan) owns the session: it
connects, waits until a call finds the connection broken, and reconnects with backoff. Calls never
wait longer than a few seconds for a connection, so a dead gateway turns into a quick
:class:`~statuspanel.errors.GatewayUnavailable` (503) instead of a hung request.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import anyio
import httpx2
from anyio.abc import TaskStatus
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CONNECTION_CLOSED,
    INVALID_PARAMS,
    CallToolResult,
    ReadResourceResult,
    RequestParamsMeta,
    TextResourceContents,
)

from gateway.api import READ_TOOLS, Backoff, on_behalf_of_meta

from .errors import (
    ActionFailed,
    BadRequest,
    GatewayUnavailable,
    NotFound,
)
from .tasks import CreatedTask, PanelTasks, TaskView, cancel_task, get_task, run_as_task
from .toolerrors import classify_tool_result

__all__ = ["GatewayClient", "gateway_base_url"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def gateway_base_url(mcp_url: str) -> str:
    """``http://host:8765/mcp`` -> ``http://host:8765``: where ``/health`` and ``/api/v1/metrics`` live."""
    url = mcp_url.rstrip("/")
    if url.endswith("/mcp"):
        url = url[: -len("/mcp")]
    return url


class _SessionLost(Exception):
    """The request never reached a live session (e.g. the gateway restarted and forgot it)."""


class GatewayClient:
    """Calls the compose-agent's MCP tools with the status panel's token.

    Args:
        url: The gateway's full MCP URL (``COMPOSE_AGENT_URL``).
        token: The status panel token, sent as ``Authorization: Bearer``.
        connect_wait: How long a call waits for a (re)connection before answering 503.
        read_timeout: Deadline for read tools (list_stacks, ps, logs).
        action_timeout: Deadline for lifecycle tools (up, down, ...), which run Compose.
    """

    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        connect_wait: float = 3.0,
        read_timeout: float = 10.0,
        action_timeout: float = 300.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 5.0,
    ) -> None:
        self.url = url
        self.base_url = gateway_base_url(url)
        self._token = token
        self.connect_wait = connect_wait
        self.read_timeout = read_timeout
        self.action_timeout = action_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._client: Client | None = None
        self._changed = anyio.Event()
        self._failed_attempts = 0
        self._lost = anyio.Event()
        self._kick = anyio.Event()
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        return self._client is not None

    def set_token(self, token: str | None) -> None:
        """Present a rotated token from now on; the live session is dropped and reopened with it."""
        if token == self._token:
            return
        self._token = token
        client = self._client
        if client is not None:
            self._mark_lost(client)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the MCP session for as long as the app runs: connect, serve, reconnect with backoff."""
        task_status.started()
        backoff = Backoff(self.backoff_initial, self.backoff_max)
        while True:
            try:
                await self._serve_one_session()
                backoff.reset()  # it was up; a fresh failure starts the backoff over
            except Exception as exc:  # noqa: BLE001 - every failure means "reconnect later"
                first = self.last_error is None
                self.last_error = _describe(exc)
                self._failed_attempts += 1
                # One warning per outage, not one per retry.
                logger.log(
                    logging.WARNING if first else logging.DEBUG,
                    "compose-agent at %s unreachable: %s; retrying with backoff (up to %.0fs)",
                    self.url,
                    self.last_error,
                    self.backoff_max,
                )
            finally:
                self._client = None
                self._notify()
            # A call that finds no connection kicks us, so a gateway that came back is used at once.
            with anyio.move_on_after(backoff.next()):
                await self._kick.wait()
            self._kick = anyio.Event()

    def _notify(self) -> None:
        """Wake callers waiting for the connection state to change."""
        self._changed.set()
        self._changed = anyio.Event()

    async def _serve_one_session(self) -> None:
        # Generous socket read timeout: a long `up --wait` answers late. Calls carry their own deadlines.
        timeout = httpx2.Timeout(5.0, read=self.action_timeout + 30)
        async with httpx2.AsyncClient(headers=self._headers(), timeout=timeout) as http:
            client = Client(
                streamable_http_client(self.url, http_client=http),
                read_timeout_seconds=self.read_timeout,
                # The long actions come back as tasks the panel follows (statuspanel.tasks).
                extensions=[PanelTasks()],
            )
            async with client:
                self._lost = anyio.Event()
                self._client = client
                if self.last_error is not None:
                    logger.warning("reconnected to the compose-agent at %s", self.url)
                else:
                    logger.info("connected to the compose-agent at %s", self.url)
                self.last_error = None
                self._notify()
                await self._lost.wait()
                logger.info("MCP session to %s lost; reconnecting", self.url)

    def _mark_lost(self, client: Client) -> None:
        if self._client is client:
            self._client = None
            self._lost.set()

    async def _wait_connected(self) -> Client:
        """The live session; else kick the owner task and wait for its next attempt (bounded).

        A refused connection fails that attempt at once, so a dead gateway answers 503 in
        milliseconds; a slow one gets up to ``connect_wait`` seconds.
        """
        client = self._client
        if client is not None:
            return client
        attempts = self._failed_attempts
        self._kick.set()
        with anyio.move_on_after(self.connect_wait):
            while self._client is None and self._failed_attempts == attempts:
                await self._changed.wait()
        if self._client is None:
            detail = f"cannot reach the compose-agent at {self.url}"
            if self.last_error:
                detail += f" ({self.last_error})"
            raise GatewayUnavailable(detail + "; is it running? The panel reconnects on its own.")
        return self._client

    async def call(
        self, tool: str, arguments: dict[str, Any] | None = None, *, on_behalf_of: str | None = None
    ) -> dict[str, Any]:
        """Call one tool and return its structured content.

        ``on_behalf_of`` names the person the panel acts for, in the request's ``_meta``; the
        gateway's audit line records it beside the panel's own identity.

        Raises:
            GatewayUnavailable: no session within ``connect_wait``, or no answer before the deadline.
            NotFound, BadRequest, Forbidden, ActionFailed: the tool reported an error.
        """
        timeout = self.read_timeout if tool in READ_TOOLS else self.action_timeout
        args = self._arguments(tool, arguments)
        meta = _meta(on_behalf_of)
        for attempt in range(2):
            client = await self._wait_connected()
            try:
                result = await self._call_once(client, tool, args, timeout, meta)
            except _SessionLost:
                if attempt == 0:
                    continue
                raise GatewayUnavailable(f"the compose-agent at {self.url} keeps dropping the session") from None
            if result.is_error:
                raise classify_tool_result(result)
            if result.structured_content is None:
                raise ActionFailed(f"the compose-agent's {tool} tool returned no structured result")
            return dict(result.structured_content)
        raise AssertionError("unreachable")  # pragma: no cover

    async def read(self, uri: str) -> str:
        """The text of one of the gateway's resources (``compose://approvals``, say).

        Raises:
            GatewayUnavailable: no session within ``connect_wait``, or no answer before the deadline.
            NotFound: the gateway has no such resource (or none this token may read).
        """
        for attempt in range(2):
            client = await self._wait_connected()
            try:
                with anyio.fail_after(self.read_timeout + 1):
                    result: ReadResourceResult = await client.read_resource(uri)
            except TimeoutError:
                self._mark_lost(client)
                raise GatewayUnavailable(f"the compose-agent did not answer reading {uri}") from None
            except MCPError as exc:
                if exc.code == INVALID_PARAMS:
                    raise NotFound(exc.error.message) from None
                self._mark_lost(client)
                if attempt == 0 and exc.code == CONNECTION_CLOSED:
                    continue
                raise GatewayUnavailable(f"lost the compose-agent reading {uri}: {exc.error.message}") from None
            except (httpx2.TransportError, anyio.ClosedResourceError, anyio.BrokenResourceError, RuntimeError) as exc:
                self._mark_lost(client)
                raise GatewayUnavailable(f"lost the compose-agent reading {uri}: {_describe(exc)}") from None
            return "".join(c.text for c in result.contents if isinstance(c, TextResourceContents))
        raise GatewayUnavailable(f"the compose-agent at {self.url} keeps dropping the session")

    def _arguments(self, tool: str, arguments: dict[str, Any] | None) -> dict[str, Any]:
        args = {k: v for k, v in (arguments or {}).items() if v is not None}
        if tool not in READ_TOOLS:
            # One key per action: the retry after a lost session joins the call instead of repeating it.
            args.setdefault("idempotency_key", uuid.uuid4().hex)
        return args

    # -- tasks: the long actions, as tasks ------------------------------------------------------

    async def start(self, tool: str, arguments: dict[str, Any], *, on_behalf_of: str | None = None) -> TaskView:
        """Start a long action; the gateway's task handle, or a finished view if it answered at once.

        Raises:
            GatewayUnavailable, BadRequest, ActionFailed: as :meth:`call`.
        """
        args, meta = self._arguments(tool, arguments), _meta(on_behalf_of)

        async def started(client: Client) -> TaskView:
            answer = await client.session.call_tool(
                tool, args, read_timeout_seconds=self.read_timeout, meta=meta, allow_claimed=True
            )
            if isinstance(answer, CreatedTask):
                return TaskView(answer.task_id, answer.status, answer.status_message)
            if isinstance(answer, CallToolResult):
                return TaskView("", "completed", result=answer)
            raise ActionFailed(f"the compose-agent answered {tool} with a {type(answer).__name__}")

        return await self._session_call(tool, started)

    async def task(self, task_id: str, *, on_behalf_of: str | None = None) -> TaskView:
        """The task as it is now (the person's own tasks only)."""
        meta = _meta(on_behalf_of)
        return await self._session_call("tasks/get", lambda c: get_task(c.session, task_id, meta, self.read_timeout))

    async def cancel(self, task_id: str, *, on_behalf_of: str | None = None) -> TaskView:
        """Stop the task's Compose run; the stack stays as Compose left it. Returns the task after."""
        meta = _meta(on_behalf_of)
        await self._session_call("tasks/cancel", lambda c: cancel_task(c.session, task_id, meta, self.action_timeout))
        return await self.task(task_id, on_behalf_of=on_behalf_of)

    async def _session_call(self, what: str, call: Callable[[Client], Awaitable[T]]) -> T:
        client = await self._wait_connected()
        try:
            with anyio.fail_after(self.action_timeout + 1):
                return await call(client)
        except TimeoutError:
            self._mark_lost(client)
            raise GatewayUnavailable(f"the compose-agent did not answer {what} in time") from None
        except MCPError as exc:
            if exc.code == INVALID_PARAMS:
                raise NotFound(f"no such task for you: {exc.error.message}") from None
            if exc.code == CONNECTION_CLOSED:
                self._mark_lost(client)
                raise GatewayUnavailable(f"lost the compose-agent during {what}") from None
            raise ActionFailed(f"the compose-agent failed {what}: {exc.error.message}") from None
        except (httpx2.TransportError, anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            self._mark_lost(client)
            raise GatewayUnavailable(f"lost the compose-agent during {what}: {_describe(exc)}") from None

    async def _call_once(
        self, client: Client, tool: str, args: dict[str, Any], timeout: float, meta: RequestParamsMeta | None
    ) -> CallToolResult:
        try:
            if tool not in READ_TOOLS:
                # The gateway answers a write with a task here (the session declares the extension).
                with anyio.fail_after(timeout + self.read_timeout + 1):
                    return await run_as_task(client.session, tool, args, meta, self.read_timeout, timeout)
            with anyio.fail_after(timeout + 1):
                return await client.call_tool(tool, args, read_timeout_seconds=timeout, meta=meta)
        except TimeoutError:
            # A hung gateway looks like this; start over with a fresh session for the next call.
            self._mark_lost(client)
            raise GatewayUnavailable(f"the compose-agent did not answer {tool} within {math.ceil(timeout)}s") from None
        except MCPError as exc:
            if exc.code == INVALID_PARAMS:
                raise BadRequest(f"the compose-agent rejected the arguments of {tool}: {exc.error.message}") from None
            if "session terminated" in exc.error.message.lower():
                # The gateway restarted and forgot our session: the request did not run, so retrying is safe.
                self._mark_lost(client)
                raise _SessionLost() from None
            if exc.code == CONNECTION_CLOSED or "error response" in exc.error.message.lower():
                self._mark_lost(client)
                if tool in READ_TOOLS and exc.code == CONNECTION_CLOSED:
                    raise _SessionLost() from None
                raise GatewayUnavailable(f"lost the compose-agent during {tool}: {exc.error.message}") from None
            raise ActionFailed(f"the compose-agent failed {tool}: {exc.error.message}") from None
        except (httpx2.TransportError, anyio.ClosedResourceError, anyio.BrokenResourceError, RuntimeError) as exc:
            self._mark_lost(client)
            raise GatewayUnavailable(f"lost the compose-agent during {tool}: {_describe(exc)}") from None


def _meta(on_behalf_of: str | None) -> RequestParamsMeta | None:
    # An open map (any extra key is allowed), which mypy cannot check for a non-literal key.
    return cast(RequestParamsMeta, on_behalf_of_meta(on_behalf_of)) if on_behalf_of else None


def _describe(exc: BaseException) -> str:
    """One line about a connection failure, digging the first cause out of exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return exc.error.message
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
