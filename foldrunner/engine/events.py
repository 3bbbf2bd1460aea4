"""What the engine tells the world, as typed events.

The journal (:class:`~foldrunner.store.recorder.JournalRecorder`), the results files
(:class:`~foldrunner.store.writer.ResultsWriter`), the live view and the plain lines all
subscribe the same way: a subclass of :class:`Events` that overrides what it needs.
:class:`Fanout` hands each event to every subscriber in order (the journal first, so
that what the others show is already durable).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from foldrunner.config.plan import Fold
from foldrunner.gpu.inventory import Slot
from foldrunner.wire.outcome import AttemptResult


@dataclass(frozen=True)
class AttemptStart:
    """An attempt whose process exists: what the journal records of its start."""

    fold: Fold
    attempt: int
    slot: Slot
    pid: int
    pid_started_at: float | None
    """The process's start time (``psutil``'s ``create_time``): with ``pid``, it names
    the process even after the pid is reused."""
    started_at: float
    """``time.time()`` at the launch."""
    log_path: str
    host: str
    """The machine the attempt runs on (its host name)."""
    node: str = ""
    """Its Ray node id (empty on the local backend)."""


@dataclass(frozen=True)
class TrialCounts:
    """Where an adaptive search stands: its trials by state, and its folds never launched."""

    budget: int
    """Trials in all (``search.optuna.trials``)."""
    complete: int
    pruned: int
    failed: int
    in_flight: int
    skipped_folds: int
    """Folds of pruned trials that were never launched (each has a ``pruned`` row)."""


class Events:
    """Every event of a run, each a no-op here: subscribers override what they need."""

    def run_started(self, total: int, already_ok: int) -> None:
        """The run begins: ``total`` folds planned, ``already_ok`` of them done before."""

    def attempt_started(self, start: AttemptStart) -> None:
        """An attempt's process was launched on ``start.slot``."""

    def report(self, fold: Fold, attempt: int, metrics: dict[str, Any], at: float) -> None:
        """The fold sent intermediate metrics (``ctx.report``); ``at`` is ``time.time()``."""

    def result_arrived(self, fold: Fold, result: AttemptResult) -> None:
        """An ``ok`` result is in hand while the fold's process still runs: from now on
        neither its later fate nor the orchestrator's death can lose it."""

    def attempt_withdrawn(self, fold: Fold, attempt: int, why: str) -> None:
        """The attempt never ran its fold (a warm spare died in its handover): it is
        forgotten and the fold launched again under the same attempt number."""

    def attempt_ended(self, fold: Fold, result: AttemptResult, final: bool) -> None:
        """The attempt's process tree has ended; ``final`` when the fold is not retried."""

    def trials(self, counts: TrialCounts) -> None:
        """An adaptive search's trials changed (one asked, one ended)."""

    def tick(self, now: float) -> None:
        """Called once per turn of the engine's loop (at least every second), with
        ``time.monotonic()``: for subscribers that write in batches."""


class Fanout(Events):
    """Hands every event to each of ``subscribers``, in order."""

    def __init__(self, *subscribers: Events) -> None:
        self.subscribers = subscribers

    def run_started(self, total: int, already_ok: int) -> None:
        for s in self.subscribers:
            s.run_started(total, already_ok)

    def attempt_started(self, start: AttemptStart) -> None:
        for s in self.subscribers:
            s.attempt_started(start)

    def report(self, fold: Fold, attempt: int, metrics: dict[str, Any], at: float) -> None:
        for s in self.subscribers:
            s.report(fold, attempt, metrics, at)

    def result_arrived(self, fold: Fold, result: AttemptResult) -> None:
        for s in self.subscribers:
            s.result_arrived(fold, result)

    def attempt_withdrawn(self, fold: Fold, attempt: int, why: str) -> None:
        for s in self.subscribers:
            s.attempt_withdrawn(fold, attempt, why)

    def attempt_ended(self, fold: Fold, result: AttemptResult, final: bool) -> None:
        for s in self.subscribers:
            s.attempt_ended(fold, result, final)

    def trials(self, counts: TrialCounts) -> None:
        for s in self.subscribers:
            s.trials(counts)

    def tick(self, now: float) -> None:
        for s in self.subscribers:
            s.tick(now)


class Guarded(Events):
    """Hands every event to ``inner``; an exception of ``inner`` is noted once (through
    ``notes``) and ``inner`` is told nothing more: a fault in a view or a results file
    never stops the engine, nor its shutdown."""

    def __init__(self, inner: Events, notes: Callable[[str], None]) -> None:
        self.inner: Events | None = inner
        self.notes = notes

    def _call(self, what: str, tell: Callable[[Events], None]) -> None:
        if self.inner is None:
            return
        try:
            tell(self.inner)
        except Exception as exc:  # noqa: BLE001 - any fault of a subscriber
            self.inner = None
            self.notes(f"an event subscriber failed and is told nothing more: {what}: "
                       f"{type(exc).__name__}: {exc}")

    def run_started(self, total: int, already_ok: int) -> None:
        self._call("run_started", lambda e: e.run_started(total, already_ok))

    def attempt_started(self, start: AttemptStart) -> None:
        self._call("attempt_started", lambda e: e.attempt_started(start))

    def report(self, fold: Fold, attempt: int, metrics: dict[str, Any], at: float) -> None:
        self._call("report", lambda e: e.report(fold, attempt, metrics, at))

    def result_arrived(self, fold: Fold, result: AttemptResult) -> None:
        self._call("result_arrived", lambda e: e.result_arrived(fold, result))

    def attempt_withdrawn(self, fold: Fold, attempt: int, why: str) -> None:
        self._call("attempt_withdrawn", lambda e: e.attempt_withdrawn(fold, attempt, why))

    def attempt_ended(self, fold: Fold, result: AttemptResult, final: bool) -> None:
        self._call("attempt_ended", lambda e: e.attempt_ended(fold, result, final))

    def trials(self, counts: TrialCounts) -> None:
        self._call("trials", lambda e: e.trials(counts))

    def tick(self, now: float) -> None:
        self._call("tick", lambda e: e.tick(now))
