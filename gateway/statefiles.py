"""Small JSON records in a folder of the state dir, one file each, written atomically.

Tasks and idempotency keys live in such folders (``<state dir>/tasks/``, ``<state dir>/keys/``).
One file per record keeps every write small and independent: a record is written under a
temporary name, synced, renamed over the old one, and the folder is synced, so a crash leaves
either the old record or the new one, never half of one. Folders are 0700 and files 0600: a
record holds a call's result, which may name containers, images and services.

Record names are ours (random ids, hashes), never a caller's text, so they are checked against a
strict pattern here and no caller can steer a path.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import StateUnavailable
from .redact import REDACTOR

__all__ = ["RecordFolder", "MAX_RECORD_BYTES", "owned_by_live_process", "process_started"]

logger = logging.getLogger(__name__)

# A deploy's result with every Compose event stays far below this; a larger file is not ours.
MAX_RECORD_BYTES = 4 * 1024 * 1024
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,96}$")
_SUFFIX = ".json"


class RecordFolder:
    """A folder of ``<name>.json`` records.

    Raises (every method that touches the disk):
        StateUnavailable: the folder or a record cannot be written; the message says where and why.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _file(self, name: str) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"not a record name: {name[:100]!r}")
        return self.path / f"{name}{_SUFFIX}"

    def _prepare(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(self.path.stat().st_mode) & 0o077:
            os.chmod(self.path, 0o700)

    def write(self, name: str, data: dict[str, Any]) -> None:
        """Write one record whole; a reader (or a crash) sees the old record or the new one."""
        target = self._file(name)
        # A task's result may quote a log line: no secret resolved from Vault reaches the disk (gateway.redact).
        text = REDACTOR.redact(json.dumps(data, separators=(",", ":"), sort_keys=True, default=str))
        payload = text.encode() + b"\n"
        try:
            self._prepare()
            fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".tmp", dir=self.path)  # created 0600
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(payload)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            finally:
                Path(tmp).unlink(missing_ok=True)
            self._sync_folder()
        except OSError as exc:
            raise StateUnavailable(
                f"cannot write {target} ({exc.strerror or exc}); free disk space or fix the state folder's "
                "permissions (COMPOSE_AGENT_STATE_DIR), then retry"
            ) from None

    def remove(self, name: str) -> None:
        """Delete one record, if it is there."""
        try:
            self._file(name).unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("cannot delete the record %s in %s: %s", name, self.path, exc.strerror or exc)

    def load(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every readable record, as (name, data). Unreadable or foreign files are logged and skipped."""
        try:
            entries = sorted(os.scandir(self.path), key=lambda entry: entry.name)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateUnavailable(f"cannot read the folder {self.path} ({exc.strerror or exc})") from None
        for entry in entries:
            name = entry.name.removesuffix(_SUFFIX)
            if entry.name.startswith(".") or not entry.name.endswith(_SUFFIX) or not _NAME.match(name):
                if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                    Path(entry.path).unlink(missing_ok=True)  # a write a crash cut short
                continue
            data = self._read(Path(entry.path))
            if data is not None:
                yield name, data

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            with open(path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size > MAX_RECORD_BYTES:
                    logger.warning("ignoring %s: larger than %d bytes", path, MAX_RECORD_BYTES)
                    return None
                data = json.loads(handle.read())
        except (OSError, ValueError) as exc:
            logger.warning("ignoring the unreadable record %s: %s", path, exc)
            return None
        if not isinstance(data, dict):
            logger.warning("ignoring %s: not a JSON object", path)
            return None
        return data

    def _sync_folder(self) -> None:
        # The rename is durable only once the folder itself is synced.
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def process_started(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot, from /proc), to tell it from a later process with its pid.

    None where /proc cannot say (another OS, the process is gone).
    """
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (2nd field) may hold spaces and parentheses; the fields after it do not.
    fields = stat_line.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def owned_by_live_process(pid: object, started: object = None) -> bool:
    """True when ``pid`` is another process that is still alive: a gateway sharing this state folder.

    Our own pid counts as gone: in a container the restarted gateway is pid 1 again, and whatever a
    record says pid 1 was doing, this process is not doing it. With ``started`` (see
    :func:`process_started`), a live process that reuses a dead gateway's pid counts as gone too.
    """
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    if isinstance(started, str):
        now = process_started(pid)
        return now is None or now == started
    return True
