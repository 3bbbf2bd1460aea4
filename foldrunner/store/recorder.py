"""The journal as a subscriber of the engine's events.

Every start, result, report and end of an attempt reaches the journal through here. A
report is written at most once a second per attempt (the latest one wins; the last is
written when the attempt ends). The first write that fails for the disk (a full disk, a
read-only run dir: a :class:`~foldrunner.errors.StorageError`) is kept in :attr:`error`
and stops the run through ``on_error``; the journal is not written again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ParamSpec

from foldrunner.config.plan import Fold
from foldrunner.engine.events import AttemptStart, Events
from foldrunner.errors import StorageError
from foldrunner.store.journal import Journal
from foldrunner.wire.outcome import AttemptResult

P = ParamSpec("P")

REPORT_INTERVAL = 1.0
"""Seconds between two journal writes of one attempt's latest report."""


class JournalRecorder(Events):
    def __init__(self, journal: Journal, on_error: Callable[[StorageError], None]) -> None:
        self.journal = journal
        self.on_error = on_error
        self.error: StorageError | None = None
        """The first journal write that failed (a full disk, a read-only run dir)."""
        self._unsaved: dict[tuple[str, int], tuple[dict[str, Any], float]] = {}
        self._saved_at: dict[tuple[str, int], float] = {}

    def _write(self, write: Callable[P, None], *args: P.args, **kwargs: P.kwargs) -> None:
        if self.error is not None:
            return
        try:
            write(*args, **kwargs)
        except StorageError as exc:
            self.error = exc
            self.on_error(exc)

    def attempt_started(self, start: AttemptStart) -> None:
        self._write(
            self.journal.start_attempt, start.fold.fold_id, start.attempt,
            started_at=start.started_at, pid=start.pid, pid_started_at=start.pid_started_at,
            gpu=start.slot.gpu, log_path=start.log_path, host=start.host, node=start.node,
        )

    def report(self, fold: Fold, attempt: int, metrics: dict[str, Any], at: float) -> None:
        key = (fold.fold_id, attempt)
        self._unsaved[key] = (metrics, at)
        if time.monotonic() - self._saved_at.get(key, float("-inf")) >= REPORT_INTERVAL:
            self._save_report(key)

    def tick(self, now: float) -> None:
        for key in [k for k in self._unsaved if now - self._saved_at.get(k, float("-inf")) >= REPORT_INTERVAL]:
            self._save_report(key)

    def _save_report(self, key: tuple[str, int]) -> None:
        metrics, at = self._unsaved.pop(key)
        self._write(self.journal.set_report, key[0], key[1], metrics, at)
        self._saved_at[key] = time.monotonic()

    def _forget_reports(self, key: tuple[str, int], save: bool) -> None:
        if save and key in self._unsaved:
            self._save_report(key)
        self._unsaved.pop(key, None)
        self._saved_at.pop(key, None)

    def result_arrived(self, fold: Fold, result: AttemptResult) -> None:
        self._write(self.journal.end_attempt, result)

    def attempt_withdrawn(self, fold: Fold, attempt: int, why: str) -> None:
        self._forget_reports((fold.fold_id, attempt), save=False)
        self._write(self.journal.forget_attempt, fold.fold_id, attempt)

    def attempt_ended(self, fold: Fold, result: AttemptResult, final: bool) -> None:
        self._forget_reports((fold.fold_id, result.attempt), save=True)
        self._write(self.journal.end_attempt, result)
