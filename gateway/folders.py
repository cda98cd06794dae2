"""The stacks dir's folders and files, opened by descriptor and never through a link.

A stack folder can be written by more than its owner: a service that binds ``./`` runs as root in
its container and can put a symlink, a hard link, a FIFO or a device node anywhere in it, and
whoever writes the stacks dir can do the same to a whole stack folder or to ``.compose-agent``.
The gateway runs as root on the host, so a path it follows there is a path to the host. Hence:

- a folder is opened one step at a time from the descriptor of the one above it, with
  ``O_NOFOLLOW | O_DIRECTORY``; every file is read, written, renamed and removed relative to its
  folder's descriptor (``dir_fd``), so a link swapped in between a check and a use cannot win:
  a swap after the open changes nothing the gateway holds;
- a file is read only when it is a regular file with one name: :func:`open_regular` looks at it
  through an ``O_PATH`` descriptor first, so a FIFO or a device is never opened at all (opening
  one can block, or act, as a watchdog device does), and a hard link (a second name of a file
  that may live anywhere on the file system) is refused, since it cannot be told apart by path;
- files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and renamed into place, and folders
  are removed with :func:`shutil.rmtree` on a folder descriptor, which never descends a link.

What is refused raises :class:`NotFollowed`, naming the stack and the entry (relative to the
stacks dir), never where a link points or what a file holds. Blocking: callers use worker threads.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from .errors import PolicyViolation

__all__ = ["Folder", "NotFollowed", "NotRegular", "open_regular", "read_regular"]

# O_PATH (Linux) opens a name without opening the file: no FIFO blocks, no device driver acts.
_O_PATH: int = getattr(os, "O_PATH", 0)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
    stat.S_IFREG: "a file",
}


class NotRegular(OSError):
    """What :func:`open_regular` found instead of a regular file with one name (``strerror`` says what)."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.EINVAL, what)


class NotFollowed(PolicyViolation):
    """An entry under the stacks dir the gateway will not use: a link, a special or hard-linked file,
    a folder that is not one, or a state folder someone else can write."""

    def __init__(self, stack: str, entry: str, what: str) -> None:
        super().__init__(
            f"stack '{stack}' is refused: {entry} is {what}; the gateway opens nothing under the stacks dir "
            "through a symbolic link, and reads only regular files with a single name (replace it with a real "
            "folder or file)"
        )
        self.entry = entry


def _describe(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    return _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")


def _check_regular(st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise NotRegular(_describe(st) if stat.S_ISLNK(st.st_mode) else f"not a regular file ({_describe(st)})")
    if st.st_nlink != 1:
        # A second name of a file that may live anywhere on this file system: by path, a hard link to
        # a host file looks like any other file, and the gateway writes none of its own with two names.
        raise NotRegular(f"a file with {st.st_nlink} hard links")


def open_regular(path: str | Path, *, dir_fd: int | None = None) -> int:
    """A read-only descriptor of ``path`` if it is a regular file with one name, opened without following a link.

    Raises:
        FileNotFoundError: nothing is there.
        NotRegular: a symbolic link, a special file (never opened: looked at through ``O_PATH``),
            or a file with more than one hard link.
        OSError: the file cannot be opened.
    """
    if not _O_PATH:  # not Linux: the flags alone (a device is opened before fstat can refuse it)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            _check_regular(os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return fd
    probe = os.open(path, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        seen = os.fstat(probe)
        _check_regular(seen)
        try:
            # The very inode the probe holds: no second lookup by name that a swap could redirect.
            fd = os.open(f"/proc/self/fd/{probe}", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # no /proc: open by name again, and insist it is the same file
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino):
            os.close(fd)
            raise NotRegular("a file that changed while it was opened")
        return fd
    finally:
        os.close(probe)


def read_regular(path: str | Path, *, limit: int, dir_fd: int | None = None) -> bytes:
    """The bytes of a regular file with one name (see :func:`open_regular`), at most ``limit`` + 1 of them.

    Raises:
        FileNotFoundError, NotRegular, OSError: as :func:`open_regular`.
    """
    fd = open_regular(path, dir_fd=dir_fd)
    try:
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class Folder:
    """An open folder under the stacks dir; ``shown`` is its path relative to the stacks dir (for messages).

    Every method takes a plain name inside this folder, never a path.
    """

    def __init__(self, fd: int, stack: str, shown: str) -> None:
        self.fd = fd
        self.stack = stack
        self.shown = shown

    @classmethod
    def stacks_dir(cls, path: Path, stack: str, *, create: bool = False) -> Folder | None:
        """The stacks dir itself (the operator's own path, links and all); None if it does not exist.

        ``stack`` is the stack the caller works for: every refusal below names it.
        """
        if create:
            path.mkdir(parents=True, exist_ok=True)
        try:
            return cls(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), stack, "")
        except FileNotFoundError:
            return None

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def entry(self, name: str) -> str:
        return f"{self.shown}/{name}" if self.shown else name

    def refuse(self, name: str, what: str) -> NotFollowed:
        return NotFollowed(self.stack, self.entry(name), what)

    # -- looking ----------------------------------------------------------------------------------

    def lstat(self, name: str) -> os.stat_result | None:
        """The entry itself (a link is a link), or None when there is none."""
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    def down(self, *names: str, create: bool = False, mode: int = 0o700) -> Folder | None:
        """The folder ``names`` below this one, each step opened without following a link; None when a step
        is missing (with ``create``, missing steps are made with ``mode``).

        Raises:
            NotFollowed: a step is a link or not a folder.
        """
        folder = self
        try:
            for name in names:
                if create:
                    try:
                        os.mkdir(name, mode, dir_fd=folder.fd)
                    except FileExistsError:
                        pass
                try:
                    fd = os.open(name, _DIR, dir_fd=folder.fd)
                except FileNotFoundError:
                    return None
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = folder.lstat(name)
                    raise folder.refuse(name, f"{_describe(st)}, not a folder" if st is not None else "gone") from None
                step = Folder(fd, self.stack, folder.entry(name))
                if folder is not self:
                    folder.close()
                folder = step
            return folder if folder is not self else Folder(os.dup(self.fd), self.stack, self.shown)
        except BaseException:
            if folder is not self:
                folder.close()
            raise

    @contextmanager
    def opened(self, *names: str, create: bool = False, mode: int = 0o700) -> Iterator[Folder | None]:
        """:meth:`down` as a context: the folder is closed after."""
        folder = self.down(*names, create=create, mode=mode)
        try:
            yield folder
        finally:
            if folder is not None:
                folder.close()

    def read(self, name: str, *, limit: int) -> bytes | None:
        """The bytes of the regular file ``name``; None when there is none.

        Raises:
            NotFollowed: a link, a special or hard-linked file, or one over ``limit`` bytes.
        """
        try:
            data = read_regular(name, limit=limit, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except NotRegular as exc:
            raise self.refuse(name, exc.strerror or "not a regular file") from None
        if len(data) > limit:
            raise self.refuse(name, f"over {limit} bytes, more than the gateway keeps of one file")
        return data

    # -- writing ----------------------------------------------------------------------------------

    def write(self, name: str, data: bytes, *, mode: int) -> None:
        """A new file ``name`` holding ``data``, flushed to disk; fails if anything (even a link) is there."""
        fd = os.open(name, _NEW_FILE, mode, dir_fd=self.fd)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def replace(self, name: str, data: bytes, *, mode: int) -> None:
        """Write beside ``name``, then rename over it: readers see the old file or the new one, never half.

        Whatever ``name`` was (a link included) is replaced, not written through.
        """
        tmp = f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            self.write(tmp, data, mode=mode)
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            self.unlink(tmp)
            raise

    def mkdir_unique(self, prefix: str, mode: int = 0o700) -> str:
        """A new, empty folder here named ``prefix`` and random hex; its name."""
        name = f"{prefix}-{secrets.token_hex(6)}"
        os.mkdir(name, mode, dir_fd=self.fd)
        return name

    def move(self, name: str, to: Folder, new_name: str) -> None:
        """Rename ``name`` here to ``new_name`` in ``to`` (one file system); the entries themselves, never a target."""
        os.rename(name, new_name, src_dir_fd=self.fd, dst_dir_fd=to.fd)

    def unlink(self, name: str) -> None:
        """Remove the file or link ``name`` (a link itself, never what it points at); nothing there is fine."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def remove(self, name: str) -> None:
        """Remove ``name`` whatever it is: a folder with everything in it, never descending a link."""
        st = self.lstat(name)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            # On a folder descriptor rmtree opens each level with O_NOFOLLOW and unlinks links as entries.
            shutil.rmtree(name, dir_fd=self.fd, ignore_errors=True)
        else:
            self.unlink(name)
