"""``compose-watchdog run``: the command line. The only place that reads the environment.

Flags win over environment variables, which win over the defaults of :class:`WatchdogConfig`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence

import anyio
from pydantic import ValidationError

from . import __version__
from .config import STABLE_PERIOD_CHECKS, WatchdogConfig
from .errors import WatchdogError
from .monitor import ComposeAgentWatchdog

__all__ = ["main"]

logger = logging.getLogger("watchdog")

# config field -> (flag, environment variable)
OPTIONS: dict[str, tuple[str, str]] = {
    "target_container": ("--target", "WATCHDOG_TARGET"),
    "check_interval_secs": ("--check-interval", "WATCHDOG_CHECK_INTERVAL"),
    "initial_delay_secs": ("--initial-delay", "WATCHDOG_INITIAL_DELAY"),
    "restart_backoff_multiplier": ("--backoff-multiplier", "WATCHDOG_BACKOFF_MULTIPLIER"),
    "max_restart_attempts": ("--max-restart-attempts", "WATCHDOG_MAX_RESTART_ATTEMPTS"),
    "stable_period_secs": ("--stable-period", "WATCHDOG_STABLE_PERIOD"),
    "status_port": ("--status-port", "WATCHDOG_STATUS_PORT"),
    "status_host": ("--status-host", "WATCHDOG_STATUS_HOST"),
}
LOG_LEVEL_ENV = "WATCHDOG_LOG_LEVEL"

_EPILOG = f"""\
Every option can also come from the environment variable named in its help; a flag wins over
the environment. The delay before restart attempt n is initial-delay * backoff-multiplier**(n-1)
(10, 15, 22.5, 33.75, 50.6 s by default). After max-restart-attempts failed restarts the target is
GaveUp: the watchdog stops restarting it but keeps observing. The attempt counter resets once the
target has stayed Healthy for the stable period (default {STABLE_PERIOD_CHECKS} x check-interval).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compose-watchdog",
        description="Keep the compose-agent container alive: detect failures through Docker events and "
        "periodic inspects, restart with exponential backoff, give up with a diagnosis.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run",
        help="supervise the target until SIGTERM/SIGINT",
        description="Supervise one container until SIGTERM or SIGINT.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = WatchdogConfig()
    run.add_argument(
        "--target",
        metavar="NAME",
        help=f"container name or ID to keep alive [env WATCHDOG_TARGET; default {defaults.target_container}]",
    )
    run.add_argument(
        "--check-interval",
        type=float,
        metavar="SECS",
        help="seconds between periodic inspects; events detect failures at once "
        f"[env WATCHDOG_CHECK_INTERVAL; default {defaults.check_interval_secs:g}]",
    )
    run.add_argument(
        "--initial-delay",
        type=float,
        metavar="SECS",
        help=f"delay before the first restart [env WATCHDOG_INITIAL_DELAY; default {defaults.initial_delay_secs:g}]",
    )
    run.add_argument(
        "--backoff-multiplier",
        type=float,
        metavar="X",
        help="each further delay is this many times the previous one, >= 1 "
        f"[env WATCHDOG_BACKOFF_MULTIPLIER; default {defaults.restart_backoff_multiplier:g}]",
    )
    run.add_argument(
        "--max-restart-attempts",
        type=int,
        metavar="N",
        help=f"restarts before giving up [env WATCHDOG_MAX_RESTART_ATTEMPTS; default {defaults.max_restart_attempts}]",
    )
    run.add_argument(
        "--stable-period",
        type=float,
        metavar="SECS",
        help="Healthy this long in a row resets the attempt counter "
        f"[env WATCHDOG_STABLE_PERIOD; default {STABLE_PERIOD_CHECKS} x check interval]",
    )
    run.add_argument(
        "--status-port",
        type=int,
        metavar="PORT",
        help="serve GET /status and GET /health on this port [env WATCHDOG_STATUS_PORT; default: off]",
    )
    run.add_argument(
        "--status-host",
        metavar="HOST",
        help="address for the status endpoint; 0.0.0.0 inside a container "
        f"[env WATCHDOG_STATUS_HOST; default {defaults.status_host}]",
    )
    run.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help=f"[env {LOG_LEVEL_ENV}; default INFO]",
    )
    run.set_defaults(parser=run)
    return parser


def load_config(args: argparse.Namespace, env: Mapping[str, str]) -> WatchdogConfig:
    """Merge flags over environment over defaults.

    Raises:
        ValueError: a value is invalid; the message names the flag and the variable.
    """
    raw: dict[str, object] = {}
    source: dict[str, str] = {}
    for field, (flag, var) in OPTIONS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            source[field] = f"{flag} {value}"
        elif env.get(var, "").strip():
            value = env[var].strip()
            source[field] = f"{var}={value!r}"
        if value is not None:
            raw[field] = value
    try:
        return WatchdogConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else ""
            problems.append(f"{source.get(field, field)}: {error['msg']}")
        raise ValueError("; ".join(problems)) from None


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )


async def _run(config: WatchdogConfig, env: Mapping[str, str]) -> int:
    """Supervise until a signal; returns the exit code."""
    # The engine's address (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH) comes from here too.
    watchdog = ComposeAgentWatchdog(config, environment=dict(env))
    code = 0

    async def stop_on_signal(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                logger.info("event=signal signal=%s", signal.Signals(signum).name)
                scope.cancel()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_on_signal, tg.cancel_scope)
        try:
            await watchdog.run()
        except* WatchdogError as group:
            for exc in group.exceptions:
                logger.error("event=fatal error=%s", json.dumps(str(exc)))
            code = 1
        tg.cancel_scope.cancel()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``compose-watchdog`` and ``python -m watchdog``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    parser = args.parser  # the sub-command's parser, so that errors show its usage
    env = os.environ
    level = args.log_level or env.get(LOG_LEVEL_ENV, "INFO").strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        parser.error(f"{LOG_LEVEL_ENV}={level!r}: choose DEBUG, INFO, WARNING or ERROR")
    try:
        config = load_config(args, env)
    except ValueError as exc:
        parser.error(str(exc))  # exits with code 2
    configure_logging(level)
    try:
        return anyio.run(_run, config, env)
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130


if __name__ == "__main__":
    sys.exit(main())
