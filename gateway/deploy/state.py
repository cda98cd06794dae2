"""The gateway's state folder under the stacks dir, ``.compose-agent/``, reached without following a link.

It holds ``tmp/`` (scratch and staging folders) and ``versions/`` (see :mod:`gateway.deploy.versions`),
and copies of every stack's ``.env``. It lives in the stacks dir so that a finished folder can be
renamed into place, and so whoever writes the stacks dir could plant a link in it, or make it first:

- each step (``.compose-agent``, ``tmp``, ``versions/<project>``, a version) is opened from the
  descriptor of the one above with ``O_NOFOLLOW``: a step that is a link is refused, and a swap
  after the open changes nothing the gateway holds (see :mod:`gateway.folders`);
- ``.compose-agent`` itself must be the gateway's own, mode 700: a folder another user can write
  is one whose entries can be swapped between any two calls;
- scratch folders are removed by name inside ``tmp``'s descriptor, never by a path that a link
  could redirect, and the sweep of stale ones never descends a link.

Blocking file-system code: callers run it in a worker thread.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ..errors import GatewayError, PolicyViolation
from ..folders import Folder

__all__ = ["STATE_DIRNAME", "StateDir", "numbers", "stage"]

logger = logging.getLogger(__name__)

STATE_DIRNAME = ".compose-agent"
# A scratch or staging folder older than this was left by a process that died mid-write.
_STALE_TMP_S = 3600.0


class StateDir:
    """``.compose-agent/`` under one stacks dir."""

    def __init__(self, stacks_dir: Path) -> None:
        self.stacks_dir = stacks_dir
        self.root = stacks_dir / STATE_DIRNAME

    def _state(self, stack: str, *names: str, create: bool = False) -> Folder | None:
        """``.compose-agent/<names>``, None if a step is missing; ``create`` makes the missing ones, 0700.

        Raises:
            NotFollowed: a step is a link or not a folder.
            PolicyViolation: the state folder is not the gateway's own.
        """
        top = Folder.stacks_dir(self.stacks_dir, stack, create=create)
        if top is None:
            return None
        with top:
            state = top.down(STATE_DIRNAME, create=create)
        if state is None:
            return None
        with state:
            _check_private(state)
            return state.down(*names, create=create)

    @contextmanager
    def opened(self, stack: str, *names: str) -> Iterator[Folder | None]:
        """The folder ``.compose-agent/<names>`` (None if it does not exist), for the work of ``stack``."""
        folder = self._state(stack, *names)
        try:
            yield folder
        finally:
            if folder is not None:
                folder.close()

    @contextmanager
    def made(self, stack: str, *names: str) -> Iterator[Folder]:
        """The folder ``.compose-agent/<names>``, made (0700) where missing."""
        folder = self._state(stack, *names, create=True)
        if folder is None:  # made a moment ago and already gone: someone else is at work here
            raise FileNotFoundError(errno.ENOENT, "removed while in use", "/".join((STATE_DIRNAME, *names)))
        with folder:
            yield folder

    def refuse_linked_stack(self, project: str) -> None:
        """Refuse a stack whose folder is a link: none of its versions are shown or brought back.

        Raises:
            NotFollowed: the stack folder is a symbolic link.
        """
        top = Folder.stacks_dir(self.stacks_dir, project)
        if top is not None:
            with top:
                st = top.lstat(project)
                if st is not None and stat.S_ISLNK(st.st_mode):
                    raise top.refuse(project, "a symbolic link, not a folder")

    def make_scratch(self, project: str, files: Mapping[str, bytes] | None = None) -> Path:
        """A fresh, private folder on the stacks dir's file system holding ``files`` (name: bytes, 0600).

        Hand it to :meth:`remove_scratch` after.
        """
        with self.made(project, "tmp") as tmp:
            _sweep_stale(tmp)
            name = stage(tmp, project, files or {})
        return self.root / "tmp" / name

    def remove_scratch(self, folder: Path) -> None:
        """Remove a folder :meth:`make_scratch` made, with everything in it and never through a link."""
        if folder.parent != self.root / "tmp":
            raise ValueError("not a scratch folder of this stacks dir")
        project = folder.name.rsplit("-", 1)[0]
        try:
            with self.opened(project, "tmp") as tmp:
                if tmp is not None:
                    tmp.remove(folder.name)
        except (OSError, GatewayError) as exc:
            # Called while unwinding: the scratch folder is swept later, and the first error stands.
            logger.warning("cannot remove the scratch folder %s: %s", folder.name, exc)


def _check_private(state: Folder) -> None:
    """The state folder must be the gateway's own: it keeps a copy of every stack's ``.env``, and
    whoever can write it could swap what the gateway reads back from it.

    Raises:
        PolicyViolation: owned by another user, or writable by the group or others.
    """
    st = os.fstat(state.fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise PolicyViolation(
            f"stack '{state.stack}' is refused: the state folder {STATE_DIRNAME} under the stacks dir belongs to "
            f"uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):o}; it keeps a copy of every stack's .env, so it "
            f"must be the gateway's own (uid {os.geteuid()}, mode 700): fix its owner and mode, or remove it"
        )


def _sweep_stale(tmp: Folder) -> None:
    now = time.time()
    for name in tmp.names():
        try:
            st = tmp.lstat(name)
            if st is not None and now - st.st_mtime > _STALE_TMP_S:
                tmp.remove(name)
        except OSError:
            continue


def numbers(folder: Folder | None) -> list[int]:
    """The version numbers in a stack's versions folder (none when there is no folder).

    Raises:
        NotFollowed: a version is a symbolic link.
    """
    if folder is None:
        return []
    found = []
    for name in folder.names():
        if not (name.isascii() and name.isdigit()) or name.startswith("0"):
            continue
        st = folder.lstat(name)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise folder.refuse(name, "a symbolic link, not a version folder")
        if st is not None and stat.S_ISDIR(st.st_mode):
            found.append(int(name))
    return sorted(found)


def stage(tmp: Folder, prefix: str, files: Mapping[str, bytes]) -> str:
    """A new private folder in ``tmp`` holding ``files`` (0600 each); its name."""
    name = tmp.mkdir_unique(prefix)
    try:
        with tmp.opened(name) as staging:
            if staging is None:
                raise FileNotFoundError(errno.ENOENT, "removed while being written", name)
            for filename, data in files.items():
                staging.write(filename, data, mode=0o600)
    except BaseException:
        tmp.remove(name)
        raise
    return name
