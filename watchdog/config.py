"""The watchdog's configuration: one pydantic model, filled once by ``__main__`` from flags and env."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["STABLE_PERIOD_CHECKS", "WatchdogConfig"]

#: Without an explicit ``stable_period_secs``, the restart counter resets after the target has been
#: Healthy for this many check intervals in a row.
STABLE_PERIOD_CHECKS = 10


class WatchdogConfig(BaseModel):
    """How the watchdog watches and repairs its target.

    The delay before restart attempt ``n`` is ``initial_delay_secs * restart_backoff_multiplier ** (n - 1)``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    target_container: str = Field(default="compose-agent", min_length=1, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
    check_interval_secs: float = Field(default=30.0, gt=0)
    max_restart_attempts: int = Field(default=5, ge=0)
    restart_backoff_multiplier: float = Field(default=1.5, ge=1.0)
    initial_delay_secs: float = Field(default=10.0, ge=0)
    stable_period_secs: float | None = Field(
        default=None, gt=0, description="Healthy this long in a row resets the counter; None means 10 x check interval."
    )
    restart_stop_timeout_secs: int = Field(default=10, ge=0, description="Grace period for SIGTERM on a restart.")
    log_tail_lines: int = Field(default=50, ge=1, description="How many log lines are searched for a diagnosis.")
    events_reconnect_delay_secs: float = Field(default=0.5, ge=0, description="Pause before an events reconnect.")
    watch_events: bool = Field(default=True, description="Follow the events stream; False leaves only polling.")
    status_host: str = "127.0.0.1"
    status_port: int | None = Field(default=None, ge=0, le=65535, description="None: no status endpoint.")

    @property
    def stable_period(self) -> float:
        """The stable period in seconds, with the default rule applied."""
        if self.stable_period_secs is not None:
            return self.stable_period_secs
        return STABLE_PERIOD_CHECKS * self.check_interval_secs

    def restart_delay(self, attempt: int) -> float:
        """The delay before restart attempt ``attempt`` (1-based)."""
        return self.initial_delay_secs * self.restart_backoff_multiplier ** (attempt - 1)
