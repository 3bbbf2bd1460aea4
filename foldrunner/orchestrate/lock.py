"""One live ``run`` per run directory: an ``flock`` on ``RUN_DIR/run.lock``.

The kernel drops the lock when the process holding it dies, however it dies, so a
lock left by a dead orchestrator never blocks a resume. The file holds the holder's
pid, for the message a second run gets and for ``foldrunner status``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from foldrunner.errors import RunDirError, RunLockedError, storage_error
from foldrunner.store.paths import NOFOLLOW, symlink_error


class RunLock:
    """An exclusive, non-blocking lock on a run directory. Use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunLockedError(
                f"run directory {self.path.parent} is in use by another live run (pid {holder}); "
                f"wait for it to end, or stop it (kill -INT {holder}) and then --resume"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def _open(self) -> int:
        """The lock file, opened (created 0644) without following a symlink planted there:
        a RunDirError for a symlink or a non-file, before anything is written."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise symlink_error(self.path) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunDirError(
                f"{self.path} is not a regular file: remove it, or choose another --run-dir")
        return fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """``RunLock(path)``: a lock file that cannot be written is a StorageError; its
    release never hides the error that ends the run (the kernel drops the lock anyway)."""
    lock = RunLock(path)
    try:
        lock.acquire()
    except OSError as exc:
        raise storage_error("the lock file", path, exc) from exc
    try:
        yield
    finally:
        try:
            lock.release()
        except OSError:  # a read-only run dir: the lock goes with its file descriptor
            pass
