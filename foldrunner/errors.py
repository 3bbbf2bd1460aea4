"""One rooted exception tree.

Every error foldrunner raises on purpose derives from :class:`FoldrunnerError`.
Messages say what happened, the likely cause, and where to look.
"""

from __future__ import annotations


class FoldrunnerError(Exception):
    """Root of every error foldrunner raises on purpose."""

    #: exit code of the command line when this error ends a command
    exit_code: int = 1


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
