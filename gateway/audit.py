"""The audit trail: one JSON line per mutating call."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["AuditLog"]

logger = logging.getLogger(__name__)


class AuditLog:
    """Appends one JSON object per line and flushes it, so a crash loses nothing already done.

    Callers pass validated arguments only; the caller field is a token's identity, never a token.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def write(
        self,
        *,
        caller: str,
        control_plane: str,
        tool: str,
        arguments: dict[str, Any],
        outcome: str,
        duration_ms: float,
        error: str | None = None,
    ) -> None:
        now = time.time()  # one reading: seconds and milliseconds of the same moment
        record: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z",
            "caller": caller,
            "control_plane": control_plane,
            "tool": tool,
            "arguments": arguments,
            "outcome": outcome,
            "duration_ms": round(duration_ms, 2),
        }
        if error is not None:
            record["error"] = error
        line = json.dumps(record, separators=(",", ":"), default=str)
        with self._lock:
            try:
                self._file.write(line + "\n")
                self._file.flush()
            except OSError:
                logger.exception("could not write the audit log at %s", self.path)

    def close(self) -> None:
        with self._lock:
            self._file.close()
