"""The engine outage the watchdog rides out: when it began, how many checks failed, when to try again.

Pure, like :mod:`watchdog.scheduler`: the caller passes the time in, and ``monitor.py`` does the
I/O and the log lines. The pause between tries starts at one second and doubles, up to the check
interval, so a long outage costs one inspect per interval and a short one is noticed fast.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FIRST_RETRY_SECS", "EngineOutage", "Recovery"]

#: The first pause after the engine stops answering; it doubles on each failed try, up to the check interval.
FIRST_RETRY_SECS = 1.0


@dataclass(frozen=True)
class Recovery:
    """An outage that ended: how long it lasted (rounded to the millisecond) and how many checks failed."""

    outage_s: float
    failed_checks: int


class EngineOutage:
    """The outage in progress, if any (``since`` is None when the engine answers), and its retry backoff."""

    def __init__(self, max_delay: float) -> None:
        self.max_delay = max_delay
        self.since: float | None = None
        self.failed_checks = 0
        self.retry_delay = 0.0
        #: When to try the engine again; None while it answers (the periodic check is then what counts).
        self.retry_at: float | None = None

    def failed(self, now: float) -> None:
        """A check failed at ``now``: begin the outage, or double the pause before the next try."""
        self.failed_checks += 1
        if self.since is None:
            self.since = now
            self.retry_delay = min(FIRST_RETRY_SECS, self.max_delay)
        else:
            self.retry_delay = min(self.retry_delay * 2, self.max_delay)
        self.retry_at = now + self.retry_delay

    def answered(self, now: float) -> Recovery | None:
        """A check was answered at ``now``: end the outage and say what it was; None if there was none."""
        if self.since is None:
            return None
        recovery = Recovery(outage_s=round(now - self.since, 3), failed_checks=self.failed_checks)
        self.since = None
        self.failed_checks = 0
        self.retry_delay = 0.0
        self.retry_at = None
        return recovery
