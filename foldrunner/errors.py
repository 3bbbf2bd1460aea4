"""One rooted exception tree.

Every error foldrunner raises on purpose derives from :class:`FoldrunnerError`.
Messages say what happened, the likely cause, and where to look.
"""

from __future__ import annotations

import errno

# The command line's exit codes. Each error below carries its own as ``exit_code`` (usage
# 2, a locked run dir 75, interrupted 130); a run that ends by itself exits with these two.
EXIT_OK = 0
"""Every fold of the run ended ``ok``."""
EXIT_FAILED = 1
"""Some fold failed after its retries, or never ran (the deadline passed)."""


class FoldrunnerError(Exception):
    """Root of every error foldrunner raises on purpose."""

    #: exit code of the command line when this error ends a command
    exit_code: int = EXIT_FAILED


class UsageError(FoldrunnerError):
    """Bad input from the user (spec, overrides, arguments): exit code 2."""

    exit_code = 2


class SpecError(UsageError):
    """The fold spec is invalid. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        head = f"invalid fold spec {source}" if source else "invalid fold spec"
        n = len(self.problems)
        lines = [f"{head}: {n} problem{'s' if n != 1 else ''}"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class PreflightError(UsageError):
    """The entry point could not be imported or is not callable."""


class RunDirError(UsageError):
    """The run directory cannot be used as asked (e.g. it holds a journal)."""


class RunLockedError(FoldrunnerError):
    """Another live run holds the run directory: exit code 75."""

    exit_code = 75


class InterruptedRun(FoldrunnerError):
    """The run was interrupted by a signal; finished results are kept: exit 130.

    ``results`` holds the results table as it was when the run stopped.
    """

    exit_code = 130

    def __init__(self, message: str, results: object = None) -> None:
        super().__init__(message)
        self.results = results


class BackendLost(FoldrunnerError):
    """The backend cannot go on (the Ray cluster's head is gone): exit 1. Every fold in
    flight ended as ``crashed``; what was journaled is kept; ``--resume`` finishes."""

    exit_code = EXIT_FAILED


class StorageError(FoldrunnerError, OSError):
    """The run directory cannot be written (a full disk, a read-only file system): exit 1.

    ``what`` names the file's role (``the journal``, ``the results file``, ...), ``path``
    the file, ``reason`` the OS's (or SQLite's) words. What the journal already holds is
    kept; ``--resume`` finishes the run once the disk is writable again. It is an
    ``OSError`` too, as the failed writes of the results files always were.
    """

    exit_code = EXIT_FAILED

    def __init__(self, what: str, path: object, reason: str) -> None:
        self.what, self.path, self.reason = what, str(path), reason
        super().__init__(
            f"cannot write {what} {path}: {reason}. foldrunner stopped (no fold is left "
            "running); the finished results already journaled are kept; "
            "free some space (or make RUN_DIR writable) and run again with --resume"
        )


#: errnos that mean the disk, not the program: full, over quota, read-only, failing
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})


def storage_error(what: str, path: object, exc: BaseException) -> StorageError:
    """A StorageError for ``exc`` (an OSError or a SQLite error) writing ``path``."""
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:
        reason = str(exc) or type(exc).__name__
    return StorageError(what, path, reason)
