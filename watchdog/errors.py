"""The watchdog's errors: one short hierarchy, translated from docker-py and the OS at the boundary."""

from __future__ import annotations

__all__ = ["DockerUnavailable", "StatusServerError", "WatchdogError"]


class WatchdogError(Exception):
    """Base class for every error the watchdog raises on purpose."""


class DockerUnavailable(WatchdogError):
    """The Docker engine could not be reached or answered with an unexpected error."""


class StatusServerError(WatchdogError):
    """The status endpoint could not listen on the requested address."""
