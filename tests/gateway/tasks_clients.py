"""Clients that follow tasks, for the tests of tasks and idempotency keys.

- :class:`TasksExtension`: the ``io.modelcontextprotocol/tasks`` extension for the SDK's own
  client (2026-07-28). The SDK has no tasks support; its client extension interface claims the
  ``resultType: task`` answer and resolves it by polling ``tasks/get``, as a host would.
- :class:`LegacyHttp` and :class:`LegacyStdio`: raw JSON-RPC on 2025-11-25 over the real
  transports. The SDK's client cannot make a task-augmented call on that revision (it checks every
  tools/call answer as a CallToolResult), so these speak the protocol themselves.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc
import docker
import httpx2
from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, GetTaskRequestParams, Request, RequestParams, Result
from pydantic import TypeAdapter

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
LEGACY = "2025-11-25"
_ANY = TypeAdapter(dict[str, Any])

# One service that turns healthy some seconds after it starts, so that `up --wait` takes that long.
# (The image is FROM scratch: no /tmp, so the marker file is at the root.)
SLOW = """
services:
  slow:
    image: {image}
    init: true
    command: ["sh", "-c", "sleep SECONDS; touch /ready; exec sleep 3600"]
    healthcheck:
      test: ["CMD", "test", "-f", "/ready"]
      interval: 1s
      timeout: 1s
      retries: 60
"""


def slow_stack(seconds: int) -> str:
    """:data:`SLOW`, healthy after ``seconds``."""
    return SLOW.replace("SECONDS", str(seconds))


def health_of(project: str) -> str | None:
    """The health of the project's first container (None without a container, or without a healthcheck)."""
    client = docker.from_env()
    try:
        listed = client.api.containers(all=True, filters={"label": f"com.docker.compose.project={project}"})
        for summary in listed:
            # A container listed may be gone by its inspect (docker-py's containers.list would raise):
            # for this poll it is not there, and the next one looks again.
            try:
                state = client.api.inspect_container(summary["Id"])["State"]
            except docker.errors.NotFound:
                continue
            return str(state.get("Health", {}).get("Status")) if "Health" in state else None
        return None
    finally:
        client.close()


def meta_of(result: CallToolResult) -> dict[str, Any]:
    """A result's ``_meta`` (it must have one)."""
    assert result.meta is not None, result
    return dict(result.meta)


def audit_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def intents(path: Path, tool: str, project: str) -> list[dict[str, Any]]:
    """The audit's intent lines for ``tool`` on ``project``: one per time Compose was asked to act."""
    return [
        line
        for line in audit_lines(path)
        if line["phase"] == "intent" and line["tool"] == tool and line["arguments"].get("project") == project
    ]


@asynccontextmanager
async def sdk_over_http(url: str, token: str, *extensions: ClientExtension) -> AsyncIterator[Client]:
    """The SDK's client (2026-07-28) over Streamable HTTP with ``token``."""
    async with httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(10, read=180)
    ) as http:
        async with Client(streamable_http_client(url, http_client=http), extensions=list(extensions)) as client:
            yield client


class CreatedTask(Result):
    """The extension's CreateTaskResult."""

    result_type: Literal["task"] = "task"
    task_id: str
    status: str
    status_message: str | None = None


class GetTask(Request[GetTaskRequestParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: GetTaskRequestParams
    name_param = "taskId"


class CancelTask(Request[GetTaskRequestParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"
    params: GetTaskRequestParams
    name_param = "taskId"


class TaskFailed(Exception):
    """A task ended ``failed``: its JSON-RPC error, and the whole task as last seen."""

    def __init__(self, task: dict[str, Any]) -> None:
        super().__init__(task.get("statusMessage") or task.get("error"))
        self.task = task


@dataclass
class TasksExtension(ClientExtension):
    """Resolves task answers by polling ``tasks/get``; remembers every task it saw, and each poll's answer."""

    identifier = TASKS_EXTENSION
    poll_s: float = 0.1
    created: list[CreatedTask] = field(default_factory=list)
    polls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def claims(self) -> list[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=CreatedTask, resolve=self._resolve)]

    async def _resolve(self, created: CreatedTask, ctx: ClaimContext) -> CallToolResult:
        self.created.append(created)
        seen = self.polls.setdefault(created.task_id, [])
        while True:
            task = await get_task(ctx.session, created.task_id)
            seen.append(task)
            if task["status"] == "completed":
                return CallToolResult.model_validate(task["result"], by_name=False)
            if task["status"] in ("failed", "cancelled"):
                raise TaskFailed(task)
            await anyio.sleep(self.poll_s)


async def get_task(session: Any, task_id: str) -> dict[str, Any]:
    """``tasks/get`` through an SDK session (2026-07-28)."""
    result: dict[str, Any] = await session.send_request(GetTask(params=GetTaskRequestParams(task_id=task_id)), _ANY)
    return result


async def cancel_task(session: Any, task_id: str) -> dict[str, Any]:
    """``tasks/cancel`` through an SDK session (2026-07-28)."""
    result: dict[str, Any] = await session.send_request(CancelTask(params=GetTaskRequestParams(task_id=task_id)), _ANY)
    return result


class RpcError(Exception):
    def __init__(self, error: Mapping[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = int(error.get("code", 0))
        self.message = str(error.get("message", ""))


def _answer(message: dict[str, Any]) -> dict[str, Any]:
    if "error" in message:
        raise RpcError(message["error"])
    result: dict[str, Any] = message["result"]
    return result


def _client_info() -> dict[str, Any]:
    return {
        "protocolVersion": LEGACY,
        "capabilities": {},
        "clientInfo": {"name": "tasks-test", "version": "1"},
    }


class LegacyHttp:
    """A 2025-11-25 session over Streamable HTTP, spoken as raw JSON-RPC; notifications are collected."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
        self.http = httpx2.AsyncClient(timeout=httpx2.Timeout(10.0, read=180.0))
        self.ids = itertools.count(1)
        self.notifications: list[dict[str, Any]] = []
        self.initialize_result: dict[str, Any] = {}

    async def __aenter__(self) -> LegacyHttp:
        response = await self.http.post(
            self.url,
            headers=self.headers,
            json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": _client_info()},
        )
        self.initialize_result = _answer(self._messages(response)[-1])
        session = response.headers.get("mcp-session-id")
        if session:
            self.headers["Mcp-Session-Id"] = session
        self.headers["MCP-Protocol-Version"] = LEGACY
        await self.http.post(
            self.url, headers=self.headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"}
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    def _messages(self, response: httpx2.Response) -> list[dict[str, Any]]:
        assert response.status_code == 200, (response.status_code, response.text[:500])
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            found = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
        else:
            found = [response.json()]
        answers = [m for m in found if "id" in m and ("result" in m or "error" in m)]
        self.notifications += [m for m in found if "method" in m and "id" not in m]
        return answers

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request; its answer's result. Raises RpcError for an error answer."""
        body = {"jsonrpc": "2.0", "id": next(self.ids), "method": method, "params": params or {}}
        response = await self.http.post(self.url, headers=self.headers, json=body)
        return _answer(self._messages(response)[-1])


class LegacyStdio:
    """A 2025-11-25 session with ``compose-agent serve --transport stdio``, spoken as raw JSON-RPC lines."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.env = env
        self.ids = itertools.count(1)
        self.notifications: list[dict[str, Any]] = []
        self.initialize_result: dict[str, Any] = {}
        self._waiting: dict[int, anyio.Event] = {}
        self._answers: dict[int, dict[str, Any]] = {}
        self.process: anyio.abc.Process | None = None
        self._group: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> LegacyStdio:
        self.process = await anyio.open_process(self.argv, env=self.env, stderr=subprocess.DEVNULL)
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self._read)
        self.initialize_result = await self.request("initialize", _client_info())
        await self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None and self._group is not None
        if self.process.stdin is not None:
            await self.process.stdin.aclose()
        with anyio.move_on_after(20):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self._group.cancel_scope.cancel()
        await self._group.__aexit__(None, None, None)

    async def _send(self, message: dict[str, Any]) -> None:
        assert self.process is not None and self.process.stdin is not None
        await self.process.stdin.send(json.dumps(message).encode() + b"\n")

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if not line.strip():
                    continue
                message = json.loads(line)
                if "id" in message and ("result" in message or "error" in message):
                    self._answers[message["id"]] = message
                    if message["id"] in self._waiting:
                        self._waiting[message["id"]].set()
                elif "method" in message and "id" not in message:
                    self.notifications.append(message)

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        number = next(self.ids)
        self._waiting[number] = anyio.Event()
        await self._send({"jsonrpc": "2.0", "id": number, "method": method, "params": params or {}})
        with anyio.fail_after(180):
            await self._waiting[number].wait()
        return _answer(self._answers.pop(number))


def with_progress(params: dict[str, Any], token: str | int) -> dict[str, Any]:
    """``params`` asking for progress notifications under ``token``."""
    return {**params, "_meta": {**params.get("_meta", {}), "progressToken": token}}


__all__ = [
    "SLOW",
    "audit_lines",
    "meta_of",
    "health_of",
    "intents",
    "sdk_over_http",
    "slow_stack",
    "CreatedTask",
    "LegacyHttp",
    "LegacyStdio",
    "RequestParams",
    "RpcError",
    "TaskFailed",
    "TasksExtension",
    "cancel_task",
    "get_task",
    "with_progress",
]
