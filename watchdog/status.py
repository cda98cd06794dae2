"""The status endpoint: ``GET /status`` (the watchdog's view of its target) and ``GET /health``."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import anyio
import uvicorn
from anyio.abc import TaskStatus
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .errors import StatusServerError
from .scheduler import Status

__all__ = ["bind_socket", "create_app", "serve_status"]

logger = logging.getLogger(__name__)


def create_app(status: Callable[[], Status]) -> Starlette:
    """A Starlette app that reports ``status()`` on ``/status`` and liveness on ``/health``."""

    async def get_status(request: Request) -> JSONResponse:
        return JSONResponse(status().as_dict())

    async def get_health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/status", get_status), Route("/health", get_health)])


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind and listen, so that a taken port is a clear error at start rather than in uvicorn.

    Raises:
        StatusServerError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise StatusServerError(f"cannot listen on {host}:{port} for the status endpoint: {exc.strerror}") from exc


async def serve_status(
    app: Starlette, sock: socket.socket, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``app`` on the bound ``sock`` until cancelled, then shut down gracefully and close it.

    Reports the port through ``task_status`` once the server accepts connections.
    """
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=1)
    # uvicorn installs its own SIGTERM/SIGINT handlers while it serves (main thread only) and replays a
    # signal it caught once it has stopped. That cooperates with the entry point's anyio signal receiver:
    # a Python-level handler leaves asyncio's wake-up descriptor in place, so the receiver still hears the
    # signal and cancels everything; uvicorn's replay then reaches a loop that no longer listens for it.
    server = uvicorn.Server(config)
    done = anyio.Event()

    async def run() -> None:
        try:
            # Shielded: cancellation asks the server to exit (below) instead of tearing it down mid-request.
            with anyio.CancelScope(shield=True):
                await server.serve(sockets=[sock])
        finally:
            done.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            try:
                while not server.started and not done.is_set():
                    await anyio.sleep(0.01)
                if not server.started:
                    raise StatusServerError("the status endpoint stopped during start-up")
                host, port = sock.getsockname()[:2]
                logger.info("event=status_listening host=%s port=%d", host, port)
                task_status.started(int(port))
                await anyio.sleep_forever()
            finally:
                server.should_exit = True
                with anyio.CancelScope(shield=True):
                    await done.wait()
    finally:
        sock.close()
