"""Small durable files beside the vault: atomic replacement and a single-owner lock.

A file that must survive power loss in either its old or its new form is written as a
temporary file, fsynced, renamed over the old one, and then the directory is fsynced so the
rename itself is on disk (a rename that is only in the page cache can be undone by a crash).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (new files, renames) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace `path` with `data` so that after a crash it holds the old or the new bytes."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(path.parent)


def read_if_present(path: Path, *, limit: int = 1 << 20) -> bytes | None:
    """The bytes of a small file, or None when it does not exist."""
    try:
        with path.open("rb") as f:
            return f.read(limit)
    except FileNotFoundError:
        return None


class DirectoryLock:
    """An exclusive advisory lock on a file; the OS drops it when the process dies."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path) -> DirectoryLock:
        """Take the lock without waiting; raise `BlockingIOError` if another holder has it."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def release(self) -> None:
        """Let go of the lock (idempotent)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
