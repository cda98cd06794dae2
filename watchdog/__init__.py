"""compose-watchdog: an independent supervisor that keeps the compose-agent container alive.

It imports nothing from ``gateway`` or ``statuspanel``, so a broken gateway cannot break it.
"""

from __future__ import annotations

from .config import WatchdogConfig
from .errors import DockerUnavailable, StatusServerError, WatchdogError
from .health import Health, State, classify
from .monitor import ComposeAgentWatchdog
from .scheduler import Change, RestartScheduler, Status

__version__ = "0.1.0"

__all__ = [
    "Change",
    "ComposeAgentWatchdog",
    "DockerUnavailable",
    "Health",
    "RestartScheduler",
    "State",
    "Status",
    "StatusServerError",
    "WatchdogConfig",
    "WatchdogError",
    "__version__",
    "classify",
]
