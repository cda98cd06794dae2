"""The panel's JSON API: probes, stacks, logs, actions, plans, versions and rollback."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.api import Action

from . import __version__
from .backend import ActionCall, LogsCall, RollbackCall
from .errors import ActionFailed, BadRequest, NotFound, PanelError
from .state import ACTIONS, panel, person
from .tasks import TaskView
from .toolerrors import classify_tool_result
from .validation import (
    json_body,
    validate_confirm,
    validate_grep,
    validate_project,
    validate_services,
    validate_since,
    validate_tail,
    validate_version,
)

__all__ = ["routes", "FEATURES", "rfc3339", "task_json"]

FEATURES = [
    "stacks",
    "ps",
    "logs",
    "actions",
    "metrics",
    "login",
    "csrf",
    "watchdog",
    "plan",
    "versions",
    "rollback",
    "on_behalf_of",
]

# The long actions: with ``Prefer: respond-async`` they answer with a task the browser follows.
TASK_ACTIONS = frozenset({"up", "down", "restart"})
_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def rfc3339(timestamp: float) -> str:
    """Unix seconds as an RFC 3339 UTC time with milliseconds."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Handler = Callable[[Request], Awaitable[Response]]


def api(handler: Handler) -> Handler:
    """Answer panel errors as JSON with their status code."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except PanelError as exc:
            return JSONResponse(exc.to_json(), status_code=exc.status_code)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


async def health(request: Request) -> Response:
    """Always 200: the panel is up. ``compose_agent`` says whether the gateway is."""
    status = await panel(request).backend.compose_agent_status()
    return JSONResponse({"status": "ok", "compose_agent": status, "version": __version__})


async def capabilities(request: Request) -> Response:
    backend = panel(request).backend
    return JSONResponse(
        {
            "compose_agent": not backend.legacy,
            "control_plane": backend.control_plane.value,
            "legacy_mode": backend.legacy,
            "version": __version__,
            "features": FEATURES + ([] if backend.legacy else ["mcp_proxy"]) + (["tasks"] if backend.tasks else []),
        }
    )


async def metrics(request: Request) -> Response:
    """The panel's executions merged with the gateway's."""
    return JSONResponse(await panel(request).backend.metrics())


@api
async def list_stacks(request: Request) -> Response:
    result = await panel(request).backend.list_stacks()
    return JSONResponse(result.model_dump(mode="json"))


@api
async def stack_ps(request: Request) -> Response:
    project = validate_project(request.path_params["project"])
    result = await panel(request).backend.ps(project)
    return JSONResponse(result.model_dump(mode="json"))


@api
async def stack_logs(request: Request) -> Response:
    project = validate_project(request.path_params["project"])
    q = request.query_params
    unknown = sorted(set(q) - {"services", "tail", "since", "grep"})
    if unknown:
        raise BadRequest(f"unknown query parameter(s) {', '.join(unknown)}; use services, tail, since, grep")
    services = validate_services(",".join(q.getlist("services")) if "services" in q else None)
    tail, since, grep = validate_tail(q.get("tail")), validate_since(q.get("since")), validate_grep(q.get("grep"))
    # Taken before the call: a follower passing it back as `since` misses no line written meanwhile.
    asked_at = time.time()
    call = LogsCall(project, services=services, tail=tail, since=since, grep=grep)
    result = await panel(request).backend.logs(call)
    return JSONResponse(result.model_dump(mode="json"), headers={"X-Panel-Time": rfc3339(asked_at)})


@api
async def stack_action(request: Request) -> Response:
    """up, down, restart, start or stop, for the person logged in; ``confirm`` answers a confirmation."""
    project = validate_project(request.path_params["project"])
    action = request.path_params["action"]
    if action not in ACTIONS:
        raise NotFound(f"unknown action {action[:40]!r}; use one of: {', '.join(ACTIONS)}")
    body = await json_body(request)
    allowed = {"volumes", "confirm"} if action == "down" else {"services", "confirm"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)} for {action}; allowed: {', '.join(sorted(allowed))}")
    volumes = body.get("volumes", False)
    if not isinstance(volumes, bool):
        raise BadRequest('"volumes" must be true or false')
    services = validate_services(body.get("services"))
    confirm = validate_confirm(body.get("confirm"))
    call = ActionCall(
        project,
        cast(Action, action),
        services=services,
        volumes=volumes,
        on_behalf_of=person(request),
        confirm=confirm,
    )
    if action in TASK_ACTIONS and _respond_async(request) and panel(request).backend.tasks:
        return _task_response(await panel(request).backend.start_action(call))
    result = await panel(request).backend.action(call)
    payload = result.model_dump(mode="json")
    if not result.ok:
        payload["error"] = result.message or f"{action} failed"
    return JSONResponse(payload, status_code=200 if result.ok else 502)


@api
async def stack_plan(request: Request) -> Response:
    """What ``up`` would do to each service now, and what ``down`` would remove. Changes nothing."""
    project = validate_project(request.path_params["project"])
    return JSONResponse((await panel(request).backend.plan(project)).model_dump(mode="json"))


@api
async def stack_versions(request: Request) -> Response:
    """The kept versions of the stack's compose file, oldest first."""
    project = validate_project(request.path_params["project"])
    return JSONResponse((await panel(request).backend.versions(project)).model_dump(mode="json"))


@api
async def stack_rollback(request: Request) -> Response:
    """Bring back an earlier version (``version``, or the one before the current) and bring it up."""
    project = validate_project(request.path_params["project"])
    body = await json_body(request)
    unknown = sorted(set(body) - {"version", "confirm"})
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)} for rollback; allowed: confirm, version")
    version, confirm = validate_version(body.get("version")), validate_confirm(body.get("confirm"))
    call = RollbackCall(project, version, on_behalf_of=person(request), confirm=confirm)
    if _respond_async(request) and panel(request).backend.tasks:
        return _task_response(await panel(request).backend.start_rollback(call))
    result = await panel(request).backend.rollback(call)
    return JSONResponse(result.model_dump(mode="json"))


# -- tasks: ----------------------------------------------------------------------------------------


def _respond_async(request: Request) -> bool:
    """The client asked for a handle to follow rather than the result (``Prefer: respond-async``, RFC 7240)."""
    return any(part.strip().lower() == "respond-async" for part in request.headers.get("prefer", "").split(","))


def task_json(view: TaskView) -> dict[str, object]:
    """A task for the browser: its status and last message; once ended, the result or the error (and its status)."""
    body: dict[str, object] = {"task": view.id or None, "status": view.status, "message": view.message}
    if view.status == "completed" and view.result is not None and not view.result.is_error:
        body["result"] = view.result.structured_content
    elif view.terminal:
        error = (
            classify_tool_result(view.result)
            if view.result is not None and view.result.is_error
            else ActionFailed(view.error or view.message or f"the action ended {view.status}")
        )
        body.update(error.to_json())
        body["error_status"] = error.status_code
    return body


def _task_response(view: TaskView) -> Response:
    if not view.terminal and view.id:
        return JSONResponse(task_json(view), status_code=202, headers={"Location": f"/api/v1/tasks/{view.id}"})
    return JSONResponse(task_json(view))


def _task_id(request: Request) -> str:
    task_id = request.path_params["task_id"]
    if not _TASK_ID.fullmatch(task_id):
        raise NotFound("no such task: a task id is 1 to 64 letters, digits, '-' or '_'")
    return str(task_id)


@api
async def task_status(request: Request) -> Response:
    """A task the person started: working (with its last message), or how it ended."""
    view = await panel(request).backend.task(_task_id(request), person(request))
    return JSONResponse(task_json(view))


@api
async def task_cancel(request: Request) -> Response:
    """Stop a task the person started: Compose is stopped where it is, and nothing is undone."""
    view = await panel(request).backend.cancel_task(_task_id(request), person(request))
    return JSONResponse(task_json(view))


def routes() -> list[BaseRoute]:
    """The JSON API's routes; the specific ones before the one that takes any action name."""
    return [
        Route("/health", health),
        Route("/capabilities", capabilities),
        Route("/api/v1/metrics", metrics),
        Route("/api/v1/stacks", list_stacks),
        Route("/api/v1/stacks/{project}", stack_ps),
        Route("/api/v1/stacks/{project}/logs", stack_logs),
        Route("/api/v1/stacks/{project}/plan", stack_plan),
        Route("/api/v1/stacks/{project}/versions", stack_versions),
        Route("/api/v1/stacks/{project}/rollback", stack_rollback, methods=["POST"]),
        Route("/api/v1/tasks/{task_id}", task_status),
        Route("/api/v1/tasks/{task_id}/cancel", task_cancel, methods=["POST"]),
        Route("/api/v1/stacks/{project}/{action}", stack_action, methods=["POST"]),
    ]
