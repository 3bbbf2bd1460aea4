"""The results files as a subscriber of the run: rewritten from the journal as folds finish."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import pandas as pd

from foldrunner.config.plan import Fold
from foldrunner.defaults import Timing
from foldrunner.engine.events import Events
from foldrunner.errors import StorageError
from foldrunner.store.journal import Journal
from foldrunner.store.paths import RunPaths
from foldrunner.store.results import build_table, write_results
from foldrunner.wire.outcome import AttemptResult


class ResultsWriter(Events):
    """Rewrites the results files as folds finish, at most every few seconds.

    The journal is the durable record; the files follow it. A big run's table takes
    longer to write, so the interval grows with it: never more than a tenth of the
    orchestrator's time goes to rewriting results.
    """

    def __init__(self, journal: Journal, paths: RunPaths,
                 notes: Callable[[str], None] | None = None) -> None:
        self.journal, self.paths = journal, paths
        self.last = 0.0
        self.interval = Timing.RESULTS_FLUSH_INTERVAL
        self.notes = notes or _no_notes
        self.storage_error: StorageError | None = None
        """Why the latest write of the results files failed (None once one succeeds)."""
        self.due = False
        """A fold ended for good since the last rewrite."""

    def attempt_ended(self, fold: Fold, result: AttemptResult, final: bool) -> None:
        self.due = self.due or final

    def tick(self, now: float) -> None:
        """The rewrite, when one is due: in the engine's turn after it launched what the
        ended folds freed (a rewrite takes milliseconds that a waiting slot would idle)."""
        if self.due and now - self.last >= self.interval:
            self.flush()

    def flush(self) -> pd.DataFrame:
        """Rewrite the files from the journal; return the table. A full disk or a
        read-only run dir never stops the run here: one note, and the journal keeps every
        result (the run raises :attr:`storage_error` at its end if it still fails)."""
        t0 = time.monotonic()
        self.due = False
        df = build_table(self.journal)
        try:
            write_results(df, self.paths)
        except StorageError as exc:
            if self.storage_error is None:
                self.notes(f"cannot write the results file {exc.path}: {exc.reason}; the run goes "
                           "on (the journal keeps every result) and it is written again later")
            self.storage_error = exc
        else:
            self.storage_error = None
        _give_back_freed_memory()
        self.last = time.monotonic()
        self.interval = max(Timing.RESULTS_FLUSH_INTERVAL, 10 * (self.last - t0))
        return df


def _give_back_freed_memory() -> None:
    """Hand the memory that building and writing the table freed back to the OS: pyarrow's
    pool (pandas keeps its text columns in Arrow; the pool, mimalloc or jemalloc, keeps
    freed pages for reuse) and glibc's heap (``malloc_trim``). A run that lives for days
    keeps a flat RSS instead of the high-water mark of its largest table. Each step is a
    no-op where it does not apply (no pyarrow imported, no glibc)."""
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        pa.default_memory_pool().release_unused()
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _no_notes(_: str) -> None:
    pass
