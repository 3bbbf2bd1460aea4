"""The journal as a subscriber of the engine's events.

Every start, result, report and end of an attempt reaches the journal through here.

Reports are written in batches: every ``ctx.report`` call of every attempt is held here
and written, with the latest report of each attempt (what ``status`` shows), in one
transaction at most once a second for the whole run (:data:`REPORT_INTERVAL`), and when an
attempt ends. Which calls the report history keeps (the thinning policy, so that a fold
that reports millions of times costs a bounded number of rows):

- every call up to :data:`HISTORY_FULL` (1,000) of an attempt;
- then every 2nd call up to call 2,000, every 4th up to 4,000, every 8th up to 8,000, and
  so on: each doubling of the calls adds 500 rows, evenly spread over it (6,000 rows for
  a million calls);
- never more than :data:`HISTORY_MAX` (10,000) rows, plus
- the attempt's last call, always.

The first write that fails for the disk (a full disk, a read-only run dir: a
:class:`~foldrunner.errors.StorageError`) is kept in :attr:`error` and stops the run
through ``on_error``; the journal is not written again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec

from foldrunner.config.plan import Fold
from foldrunner.engine.events import AttemptStart, Events
from foldrunner.errors import StorageError
from foldrunner.store.journal import Journal, ReportRow
from foldrunner.wire.outcome import AttemptResult

P = ParamSpec("P")

REPORT_INTERVAL = 1.0
"""Seconds between two batched journal writes of the reports (of all attempts together)."""
HISTORY_FULL = 1000
"""Calls of one attempt that the report history keeps every one of."""
HISTORY_MAX = 10_000
"""Rows of one attempt's report history at most (its last call besides)."""


def keep_call(seq: int, kept: int) -> bool:
    """Whether the report history keeps call ``seq`` (0-based) of an attempt that has
    kept ``kept`` rows so far: the thinning policy of this module's docstring."""
    if kept >= HISTORY_MAX:
        return False
    q = seq // HISTORY_FULL
    return q == 0 or seq % (2 << (q.bit_length() - 1)) == 0


@dataclass
class _History:
    """What the recorder knows of one running attempt's reports."""

    started_at: float
    calls: int = 0
    kept: int = 0
    skipped: ReportRow | None = None
    """The latest call, when the history did not keep it (written when the attempt ends)."""


class JournalRecorder(Events):
    def __init__(self, journal: Journal, on_error: Callable[[StorageError], None]) -> None:
        self.journal = journal
        self.on_error = on_error
        self.error: StorageError | None = None
        """The first journal write that failed (a full disk, a read-only run dir)."""
        self._history: dict[tuple[str, int], _History] = {}
        self._rows: list[ReportRow] = []
        """Report history rows not yet written."""
        self._latest: dict[tuple[str, int], tuple[dict[str, Any], float]] = {}
        """The latest report of each attempt not yet written."""
        self._flushed_at = float("-inf")

    def _write(self, write: Callable[P, None], *args: P.args, **kwargs: P.kwargs) -> None:
        if self.error is not None:
            return
        try:
            write(*args, **kwargs)
        except StorageError as exc:
            self.error = exc
            self.on_error(exc)

    def attempt_started(self, start: AttemptStart) -> None:
        self._history[(start.fold.fold_id, start.attempt)] = _History(start.started_at)
        self._write(
            self.journal.start_attempt, start.fold.fold_id, start.attempt,
            started_at=start.started_at, pid=start.pid, pid_started_at=start.pid_started_at,
            gpu=start.slot.gpu, log_path=start.log_path, host=start.host, node=start.node,
        )

    def report(self, fold: Fold, attempt: int, metrics: dict[str, Any], at: float) -> None:
        key = (fold.fold_id, attempt)
        h = self._history.get(key)
        if h is None:  # a report before its start was recorded: time from the first report
            h = self._history[key] = _History(at)
        row = (fold.fold_id, attempt, h.calls, max(0.0, at - h.started_at), metrics)
        if keep_call(h.calls, h.kept):
            self._rows.append(row)
            h.kept += 1
            h.skipped = None
        else:
            h.skipped = row
        h.calls += 1
        self._latest[key] = (metrics, at)
        if time.monotonic() - self._flushed_at >= REPORT_INTERVAL:
            self._flush_reports()

    def tick(self, now: float) -> None:
        if (self._rows or self._latest) and now - self._flushed_at >= REPORT_INTERVAL:
            self._flush_reports()

    def _flush_reports(self) -> None:
        rows, latest = self._rows, self._latest
        self._rows, self._latest = [], {}
        if rows or latest:
            self._write(self.journal.save_reports, rows, latest)
        self._flushed_at = time.monotonic()

    def _forget_reports(self, key: tuple[str, int], save: bool) -> None:
        h = self._history.pop(key, None)
        if save:
            if h is not None and h.skipped is not None:
                self._rows.append(h.skipped)
            if self._rows or key in self._latest:
                self._flush_reports()
            return
        self._latest.pop(key, None)
        self._rows = [r for r in self._rows if (r[0], r[1]) != key]

    def result_arrived(self, fold: Fold, result: AttemptResult) -> None:
        self._write(self.journal.end_attempt, result)

    def attempt_withdrawn(self, fold: Fold, attempt: int, why: str) -> None:
        self._forget_reports((fold.fold_id, attempt), save=False)
        self._write(self.journal.forget_attempt, fold.fold_id, attempt)

    def attempt_ended(self, fold: Fold, result: AttemptResult, final: bool) -> None:
        self._forget_reports((fold.fold_id, result.attempt), save=True)
        self._write(self.journal.end_attempt, result)
