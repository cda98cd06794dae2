"""The restart state machine: pure, with injected clocks, so the schedule is tested without waiting.

It turns observations (:class:`~watchdog.health.Health`) into a state, a restart schedule and a
list of changes for the caller to log. It never talks to Docker and never sleeps.

Rules:

- The delay before restart attempt ``n`` is ``initial_delay * multiplier ** (n - 1)``.
- A failing target gets at most ``max_restart_attempts`` restarts; failing again after the last one
  moves to ``GaveUp``, and nothing is restarted any more. Observation goes on.
- The counter resets once the target has been Healthy for the stable period without a break. A
  reset on the first Healthy check would let a crash-looping target that starts for a second be
  restarted forever.
- Leaving ``GaveUp`` (the target came back healthy, or disappeared) and ``NotFound`` reset the
  counter at once: the watchdog did not cause those, someone did something to the target.
- ``NotFound`` is never restarted; a target that dockerd is restarting is left alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from .config import WatchdogConfig
from .health import Health, State

__all__ = ["Change", "RestartScheduler", "Status"]


@dataclass(frozen=True)
class Change:
    """Something worth one log line: a state transition (``kind="transition"``) or a counter reset."""

    kind: str
    previous: State
    state: State
    reason: str
    restart_attempts: int
    next_restart_in_s: float | None
    diagnosis: State | None = None


@dataclass(frozen=True)
class Status:
    """What ``GET /status`` returns."""

    target: str
    state: str
    reason: str
    restart_attempts: int
    next_restart_in_s: float | None
    last_transition_at: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "state": self.state,
            "reason": self.reason,
            "restart_attempts": self.restart_attempts,
            "next_restart_in_s": self.next_restart_in_s,
            "last_transition_at": self.last_transition_at,
        }


class RestartScheduler:
    """Decides when to restart the target and when to give up.

    ``now`` is a monotonic clock for the schedule; ``wall`` gives the timestamps people read.
    """

    def __init__(
        self,
        config: WatchdogConfig,
        now: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._now = now
        self._wall = wall
        self.state = State.UNKNOWN
        self.reason = ""
        self.attempts = 0
        self.next_restart_at: float | None = None
        self.healthy_since: float | None = None
        self.last_transition_at: float | None = None
        #: The failing state that led to GaveUp: it picks the advice in the give-up line.
        self.diagnosis: State | None = None
        # A GLIBC diagnosis seen since the counter was last zero: a later observation that missed
        # the log line (not yet written when the exit was seen) must not hide it in the give-up line.
        self._glibc: Health | None = None

    def delay(self, attempt: int) -> float:
        """The delay before restart attempt ``attempt`` (1-based)."""
        return self.config.restart_delay(attempt)

    def observe(self, health: Health) -> list[Change]:
        """Feed one observation; returns the changes to log (at most a reset and a transition)."""
        now = self._now()
        previous = self.state
        changes: list[Change] = []

        if health.state is State.GLIBC_MISMATCH:
            self._glibc = health
        if health.state is State.NOT_FOUND:
            self.next_restart_at = None
            self.healthy_since = None
            self._reset()
            self._set(State.NOT_FOUND, health.reason)
        elif health.state is State.HEALTHY:
            self.next_restart_at = None
            if previous is State.GAVE_UP:
                self._reset()
            if previous is not State.HEALTHY or self.healthy_since is None:
                self.healthy_since = now
            self._set(State.HEALTHY, health.reason)
            if self.attempts and now - self.healthy_since >= self.config.stable_period:
                self._reset()
                changes.append(self._change("counter_reset", previous))
        elif previous is State.GAVE_UP:
            # Keep observing, restart nothing; the give-up line already carried the diagnosis.
            self.healthy_since = None
        else:
            self.healthy_since = None
            self._set(health.state, health.reason)
            if health.engine_restarting:
                # dockerd's restart policy is at work: restarting it ourselves would fight it.
                self.next_restart_at = None
            elif self.next_restart_at is None:
                if self.attempts >= self.config.max_restart_attempts:
                    worst = self._glibc or health
                    self.diagnosis = worst.state
                    self._set(State.GAVE_UP, worst.reason)
                else:
                    self.next_restart_at = now + self.delay(self.attempts + 1)

        if self.state is not previous:
            self.last_transition_at = self._wall()
            changes.append(self._change("transition", previous))
        return changes

    def restart_due(self) -> bool:
        """True when a restart is scheduled and its delay has passed."""
        return self.next_restart_at is not None and self._now() >= self.next_restart_at

    def record_restart(self) -> int:
        """Count a restart attempt (made, whether or not it worked); returns its number."""
        self.attempts += 1
        self.next_restart_at = None
        return self.attempts

    def next_wakeup(self) -> float | None:
        """When the schedule next needs attention: a due restart, or the end of the stable period."""
        times: list[float] = []
        if self.next_restart_at is not None:
            times.append(self.next_restart_at)
        if self.state is State.HEALTHY and self.attempts and self.healthy_since is not None:
            times.append(self.healthy_since + self.config.stable_period)
        return min(times) if times else None

    def next_restart_in(self) -> float | None:
        if self.next_restart_at is None:
            return None
        return round(max(0.0, self.next_restart_at - self._now()), 3)

    def status(self) -> Status:
        at = self.last_transition_at
        return Status(
            target=self.config.target_container,
            state=str(self.state),
            reason=self.reason,
            restart_attempts=self.attempts,
            next_restart_in_s=self.next_restart_in(),
            last_transition_at=None if at is None else datetime.fromtimestamp(at, UTC).isoformat(),
        )

    def _reset(self) -> None:
        self.attempts = 0
        self.diagnosis = None
        self._glibc = None

    def _set(self, state: State, reason: str) -> None:
        self.state = state
        self.reason = reason

    def _change(self, kind: str, previous: State) -> Change:
        return Change(
            kind=kind,
            previous=previous,
            state=self.state,
            reason=self.reason,
            restart_attempts=self.attempts,
            next_restart_in_s=self.next_restart_in(),
            diagnosis=self.diagnosis if self.state is State.GAVE_UP else None,
        )
