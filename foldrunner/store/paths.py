"""Every path of a run directory, derived in one place, and how its files are opened.

``spec.yaml`` and ``journal.sqlite`` may hold secrets from the spec's ``env``: they are
the owner's only (0600, whatever the umask). No file of a run directory is written
through a symlink planted in it: files rewritten whole are replaced by a rename (which
replaces a symlink, never follows it); files opened in place are opened with
``O_NOFOLLOW``; a symlink where the lock, the spec, the journal or the logs go is refused
with a :class:`~foldrunner.errors.RunDirError` before anything is launched.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from foldrunner.errors import RunDirError, UsageError

#: the mode of files that may hold secrets (spec.yaml, the journal): exactly 0600
PRIVATE = 0o600
#: the mode of other new files (the results): 0666 less the umask, like any new file
PUBLIC = 0o666
#: flags for every open of a run directory's file: never through a symlink
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class RunPaths:
    """The layout of ``RUN_DIR``."""

    root: Path

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def journal(self) -> Path:
        return self.root / "journal.sqlite"

    @property
    def lock(self) -> Path:
        return self.root / "run.lock"

    @property
    def results_csv(self) -> Path:
        return self.root / "results.csv"

    @property
    def results_parquet(self) -> Path:
        return self.root / "results.parquet"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def spare_logs(self) -> Path:
        """``logs/spares``: what warm spares say while they wait for a fold."""
        return self.logs / "spares"

    def log(self, fold_id: str, attempt: int) -> Path:
        """``logs/<fold>.<attempt>.log``: the captured stdout and stderr of one attempt."""
        return child_path(self.logs, f"{fold_id}.{attempt}.log")

    @property
    def zygote_status(self) -> Path:
        """Where the zygote says ``ready: ...`` or ``error: ...``."""
        return self.root / "zygote.status"

    def require_journal(self) -> Path:
        """The journal's path; a UsageError when this is not a run directory."""
        if not self.journal.exists():
            raise UsageError(f"{self.root} is not a foldrunner run directory: no journal.sqlite in it")
        return self.journal

    @property
    def preflight_log(self) -> Path:
        return self.logs / "preflight.log"

    def make(self) -> None:
        """Create ``RUN_DIR`` and ``logs/``; refuse a symlink where the run will write."""
        for path in (self.lock, self.spec, *journal_files(self.journal), self.logs,
                     self.spare_logs):
            refuse_symlink(path)
        self.logs.mkdir(parents=True, exist_ok=True)


def child_path(parent: Path, name: str) -> Path:
    """``parent / name`` for a plain file name, without letting pathlib intern ``name``.

    Before Python 3.14, pathlib interns every part of a path it parses (``sys.intern``).
    A name made anew for each fold (its log) or each results write (a temporary file) is
    then a new entry of the interpreter's table of interned strings every time: the
    entries of the names that died are reused only when the table is rebuilt, so the
    orchestrator used up the table's slack (about 2,300 entries after its imports, on
    3.11) within ~1,100 folds and the table doubled (+1 MiB of RSS in one step, measured
    by ``scripts/soak.py``); on 3.12 such names are never freed at all
    (python/cpython#121780). ``_make_child_relpath`` (3.10-3.12), what pathlib itself
    uses to join a directory's entries to it, appends ``name`` as it is; where it is
    missing or ``name`` is not a plain name, the ordinary join.
    """
    make = getattr(parent, "_make_child_relpath", None)
    if make is None or not name or name in (".", "..") or "/" in name or os.sep in name:
        return parent / name
    child: Path = make(name)
    return child


def journal_files(journal: Path) -> list[Path]:
    """A SQLite database and the ``-wal`` and ``-shm`` files that go with it."""
    return [journal, *(journal.with_name(journal.name + s) for s in ("-wal", "-shm"))]


def symlink_error(path: Path) -> RunDirError:
    """The error for a symlink planted where a run directory's file goes."""
    return RunDirError(
        f"{path} is a symlink: foldrunner never writes a run directory's files through a"
        " symlink (it could overwrite a file that is not the run's, or expose secrets);"
        " remove it, or choose another --run-dir"
    )


def refuse_symlink(path: Path) -> None:
    """A RunDirError when ``path`` is a symlink (dangling or not)."""
    if path.is_symlink():
        raise symlink_error(path)


def private_file(path: Path, *, create: bool = True) -> None:
    """Make ``path`` a regular file that only its owner may read (creating it, empty,
    when ``create`` and missing), without following a symlink.

    A symlink or a non-file is a RunDirError. Other failures (a read-only or missing
    directory, a file without write permission) are left to whoever opens it next, which
    reports them as it always did.
    """
    flags = os.O_RDWR | os.O_NONBLOCK | NOFOLLOW | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, PRIVATE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise symlink_error(path) from None
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RunDirError(
                f"{path} is not a regular file: remove it, or choose another --run-dir")
        if stat.S_IMODE(st.st_mode) != PRIVATE:
            os.fchmod(fd, PRIVATE)
    finally:
        os.close(fd)


def private_journal(journal: Path) -> None:
    """Before SQLite opens ``journal``: create it 0600 (SQLite gives its ``-wal`` and
    ``-shm`` the database's mode when it creates them) and make those that already
    exist 0600 too; a symlink at any of the three is a RunDirError."""
    first, *others = journal_files(journal)
    private_file(first)
    for path in others:
        private_file(path, create=False)


def atomic_write(target: Path, write: Callable[[Path], object], mode: int = PRIVATE) -> Path:
    """Write ``target`` through ``write(tmp_path)`` and a rename: never half a file, never
    through a symlink (one at ``target`` is replaced, not followed).

    The temporary file is created new (``O_EXCL``, ``O_NOFOLLOW``) next to ``target``
    before ``write`` opens it: with ``PRIVATE`` (the default) it is exactly 0600 whatever
    the umask; with ``PUBLIC`` it has the permissions of any new file.
    """
    tmp = child_path(target.parent, f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, mode)
    try:
        try:
            if mode == PRIVATE:
                os.fchmod(fd, PRIVATE)  # the umask may have taken the owner's bits too
        finally:
            os.close(fd)
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
