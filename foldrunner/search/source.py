"""The scheduler's source of folds for an adaptive search: ask, prune, tell.

:class:`TrialSource` is what :class:`~foldrunner.engine.scheduler.Scheduler` asks for more
work when a slot would otherwise be idle (and no started trial has a fold waiting: those are
queued first; with a pruner, a fold that the fold before it may still prune out is held back
while a new trial can start instead, see :meth:`TrialSource.holds`). Each time it asks the
study for one trial, journals the trial and its folds, and hands them over in launch order
(replicate-major, then fold). When a fold ends it records the score; with a pruner, it
decides whether the trial goes on (:mod:`foldrunner.search.pruner`, or Optuna's Wilcoxon
pruner); a pruned trial's unstarted folds are taken out of the queue and its running ones
ended through the scheduler's stop path (:class:`~foldrunner.engine.scheduler.Withdraw`).
Once every fold of a trial has ended for good, the journal records how the trial ended and
then the study is told: ``COMPLETE`` with the objective's mean over all of its folds,
``PRUNED``, or ``FAIL`` (a fold that failed after its retries is not a score).

A trial's states in the journal: ``running`` (in flight), ``pruning`` (pruned, its
running folds ending), ``complete``, ``pruned``, ``fail``. :meth:`TrialSource.open`
brings the study in line with the journal on a resume (see :mod:`foldrunner.search.study`).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foldrunner.config.plan import Adaptive, Fold
from foldrunner.config.spec import OptunaSearch, Spec
from foldrunner.engine.events import Events, TrialCounts
from foldrunner.engine.scheduler import Withdraw
from foldrunner.errors import RunDirError, StorageError
from foldrunner.search import space as spaces
from foldrunner.search.pruner import median_verdict, prefix
from foldrunner.search.study import open_study, study_path, trial_object
from foldrunner.store.journal import Journal
from foldrunner.wire.outcome import AttemptResult, Status

if TYPE_CHECKING:
    import optuna

CLOSED = ("complete", "pruned", "fail")
"""The journal's states of a trial that has ended for good."""


@dataclass
class TrialRun:
    """One trial of the search as the source follows it."""

    number: int
    params: dict[str, Any]
    """The search's parameters (without the spec's fixed ``params``)."""
    folds: list[Fold]
    """In launch order: a fold's place here is its step."""
    state: str = "running"
    scores: dict[int, float] = field(default_factory=dict)
    """The objective by step, of the folds that ended ``ok``."""
    final: dict[int, Status] = field(default_factory=dict)
    """How each fold ended for good, by step (no entry: waiting, running, or cancelled)."""
    checked: int = 0
    """The prefix the pruner has seen (see :func:`~foldrunner.search.pruner.prefix`)."""
    note: str = ""
    handle: optuna.trial.Trial | None = None


class TrialSource:
    """Trials asked of the study as slots come free; see the module's docstring."""

    def __init__(self, spec: Spec, adaptive: Adaptive, journal: Journal, study: optuna.Study,
                 run_dir: Path, events: Events | None = None,
                 notes: Callable[[str], None] | None = None) -> None:
        opt = spec.search.optuna if spec.search is not None else None
        assert opt is not None and spec.objective is not None
        self.opt: OptunaSearch = opt
        self.adaptive, self.journal, self.study = adaptive, journal, study
        self.metric, self.maximize = spec.objective.metric, spec.objective.mode == "max"
        self.events = events or Events()
        self.notes = notes or (lambda text: None)
        self._told_missing = False
        self.path = study_path(run_dir)
        self.runs: dict[int, TrialRun] = {}
        self.skipped = 0
        self._requests: dict[Withdraw, TrialRun] = {}

    # -- opening: a new run, or a resume brought in line ---------------------------
    @classmethod
    def open(cls, spec: Spec, adaptive: Adaptive, journal: Journal, run_dir: Path, resume: bool,
             events: Events | None = None, notes: Callable[[str], None] | None = None) -> TrialSource:
        """The source of a run: its study created, or (resume) loaded and reconciled with
        the journal: a trial the study asked and the journal never took is adopted (its
        missing parameters suggested), trials the journal ended are told to the study."""
        study = open_study(spec, run_dir, resume)
        source = cls(spec, adaptive, journal, study, run_dir, events, notes)
        with source._study_writes():
            source._reconcile()
        return source

    def _reconcile(self) -> None:
        import optuna

        frozen = self.study.get_trials(deepcopy=False)
        rows = {r["trial"]: r for r in self.journal.search_trials()}
        lacking = sorted(set(rows) - {t.number for t in frozen})
        if lacking:
            raise RunDirError(f"cannot resume: the journal has trial(s) {lacking} that the study in "
                              f"{self.path} lacks (was the file replaced?); start a new run dir")
        for ft in frozen:
            if ft.number in rows:
                continue
            if ft.state is not optuna.trial.TrialState.RUNNING:
                raise RunDirError(f"cannot resume: the study in {self.path} has trial {ft.number} "
                                  f"({ft.state.name}) that the journal never took; start a new run dir")
            handle = optuna.trial.Trial(self.study, ft._trial_id)
            if len(rows) >= self.opt.trials:  # asked before a crash, past a lowered budget
                self.study.tell(handle, state=optuna.trial.TrialState.FAIL)
                continue
            params = spaces.suggest(handle, self.opt.space)  # completes a partial ask
            self.journal.add_trial(ft.number, params, self.adaptive.folds_of(ft.number, params))
            rows = {r["trial"]: r for r in self.journal.search_trials()}
        latest: dict[str, Any] = {}
        for row in self.journal.attempts():  # by fold id, attempt: the last one wins
            latest[row["fold_id"]] = row
        for n, row in sorted(rows.items()):
            params = json.loads(row["params"])
            run = TrialRun(n, params, self.adaptive.folds_of(n, params), state=row["state"])
            self.runs[n] = run
            relabel = []
            for step, fold in enumerate(run.folds):
                a = latest.get(fold.fold_id)
                if a is None:
                    continue
                status = Status(a["status"])
                if status is Status.PRUNED and a["attempt"] == 0:
                    self.skipped += 1
                if status is Status.OK:
                    self._score(run, step, json.loads(a["metrics"] or "{}"))
                elif run.state == "pruning" and status in (Status.CANCELLED, Status.RUNNING):
                    relabel.append((fold.fold_id, a["attempt"]))
                    status = Status.PRUNED
                if status not in (Status.CANCELLED, Status.RUNNING):
                    run.final[step] = status
            if relabel:
                self.journal.end_trial(n, "pruning", None, row["note"], relabel=relabel)
            run.note = row["note"]
            run.checked = prefix(run.scores)
            if run.state in CLOSED:
                if frozen[n].state is optuna.trial.TrialState.RUNNING:  # journaled, never told
                    self._tell(run)
                continue
            run.handle = trial_object(self.study, n)
            if run.state == "pruning" or all(s is Status.OK for s in run.final.values()):
                self._maybe_close(run)  # every fold ended before the crash: ends it now

    def initial_work(self, counts: dict[str, int], used: dict[str, int]) -> list[tuple[Fold, int, int]]:
        """The folds that trials in flight still need (a resume): all but their ``ok`` ones,
        each with its next attempt number and the attempts it has used."""
        work = []
        for run in self.runs.values():
            if run.state != "running":
                continue
            for step, fold in enumerate(run.folds):
                if run.final.get(step) is not Status.OK:
                    run.final.pop(step, None)  # it runs again
                    work.append((fold, counts.get(fold.fold_id, 0) + 1, used.get(fold.fold_id, 0)))
        self._emit()
        return work

    # -- what the scheduler asks -----------------------------------------------------
    def left(self) -> int:
        return max(0, self.opt.trials - len(self.runs)) * self.adaptive.per_trial

    def more(self) -> list[Fold]:
        """A new trial's folds, or [] when the budget is spent or ``concurrent_trials`` are
        in flight."""
        cap = self.opt.concurrent_trials
        if not self.left() or (cap is not None and self._in_flight() >= cap):
            return []
        with self._study_writes():
            handle = self.study.ask()
            params = spaces.suggest(handle, self.opt.space)
        folds = self.adaptive.folds_of(handle.number, params)
        self.journal.add_trial(handle.number, params, folds)  # after the study: see study.py
        self.runs[handle.number] = TrialRun(handle.number, params, folds, handle=handle)
        self._emit()
        return folds

    def holds(self, fold: Fold) -> bool:
        """With a pruner, a trial's fold waits while the fold before it runs, if that one's
        end may prune the trial (past ``warmup_folds``) and a new trial can start instead:
        a trial pruned after k folds then costs k folds, not k and those launched beside
        them. With nothing else to run, the scheduler launches it anyway."""
        pruner = self.opt.pruner
        run = self.runs.get(fold.trial)
        if pruner is None or run is None or run.state != "running":
            return False
        step = fold.index - fold.trial * self.adaptive.per_trial
        if pruner.wilcoxon is not None:  # Optuna's test needs max(2, warmup) folds in
            first = max(2, pruner.wilcoxon.warmup_folds)
        else:  # the fold-aware ones judge a trial after more than warmup_folds folds
            first = pruner.settings.warmup_folds + 1
        return step >= first and (step - 1) not in run.final

    def ended(self, fold: Fold, result: AttemptResult, final: bool) -> list[Withdraw]:
        run = self.runs.get(fold.trial)
        if run is None or not final or result.status is Status.CANCELLED:
            return []  # a cancelled fold (a stop): its trial stays in flight for --resume
        step = fold.index - fold.trial * self.adaptive.per_trial
        run.final[step] = result.status
        if result.status is Status.OK:
            self._score(run, step, result.metrics)
        with self._study_writes():
            if step in run.scores and run.handle is not None and run.state in ("running", "pruning"):
                self._report(run, step)
            reason = self._verdict(run) if run.state == "running" else None
            if reason is not None:
                run.state, run.note = "pruning", reason
                request = Withdraw(_of_trial(run.number), Status.PRUNED, reason)
                self._requests[request] = run
                return [request]
            self._maybe_close(run)
        return []

    def withdrawn(self, request: Withdraw, never_launched: list[tuple[Fold, int]]) -> None:
        """The pruned trial's waiting folds left the queue: each gets its ``pruned`` row
        (attempts 0 when it was never launched), in the transaction that marks the trial."""
        run = self._requests.pop(request)
        rows = []
        for fold, attempt in never_launched:
            run.final[fold.index - fold.trial * self.adaptive.per_trial] = Status.PRUNED
            rows.append((fold.fold_id, 0 if attempt == 1 else attempt))
        self.journal.end_trial(run.number, "pruning", None, run.note, never_launched=rows)
        self.skipped += sum(1 for _, n in rows if n == 0)
        with self._study_writes():
            self._maybe_close(run)
        self._emit()

    # -- the trial's score, verdict and end ---------------------------------------------
    def _score(self, run: TrialRun, step: int, metrics: dict[str, Any]) -> None:
        value = metrics.get(self.metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            run.scores[step] = float(value)
        else:
            run.note = run.note or (f"objective {self.metric!r} missing or not a finite number in "
                                    f"{run.folds[step].fold_id}'s result")
            if not self._told_missing and self.metric not in metrics:
                self._told_missing = True  # most likely a typo in objective.metric: say it once
                self.notes(f"objective.metric {self.metric!r} is not in {run.folds[step].fold_id}'s"
                           f" result (it returned: {', '.join(map(str, metrics)) or 'nothing'}):"
                           " the study counts every such trial as FAIL")

    def _report(self, run: TrialRun, step: int) -> None:
        assert run.handle is not None
        frozen = self.study._storage.get_trial(run.handle._trial_id)
        if step not in frozen.intermediate_values:
            run.handle.report(run.scores[step], step)

    def _verdict(self, run: TrialRun) -> str | None:
        """Why ``run`` is pruned now, or None (no pruner, or it goes on)."""
        pruner = self.opt.pruner
        if pruner is None:
            return None
        q = prefix(run.scores)
        if q <= run.checked:
            return None  # its prefix did not grow: nothing new to compare
        first, run.checked = run.checked + 1, q
        fold_aware = pruner.median or pruner.percentile
        if fold_aware is not None:
            keep = pruner.percentile.percentile if pruner.percentile is not None else 50.0
            others = [r.scores for r in self.runs.values() if r is not run]
            for k in range(first, q + 1):
                reason = median_verdict(run.scores, others, k, maximize=self.maximize,
                                        warmup_folds=fold_aware.warmup_folds,
                                        min_trials=fold_aware.min_trials, keep=keep)
                if reason is not None:
                    return reason
            return None
        assert run.handle is not None
        if run.handle.should_prune():  # Optuna's WilcoxonPruner, fold scores paired by step
            return f"pruned after {q} fold(s) by the Wilcoxon signed-rank test against the best trial"
        return None

    def _maybe_close(self, run: TrialRun) -> None:
        """Once every fold of ``run`` has ended for good: the journal, then the study."""
        if len(run.final) < len(run.folds) or run.state in CLOSED:
            return
        statuses = set(run.final.values())
        if Status.PRUNED in statuses:
            state, value = "pruned", None
        elif statuses == {Status.OK} and len(run.scores) == len(run.folds):
            state, value = "complete", statistics.fmean(run.scores[i] for i in range(len(run.folds)))
        else:
            state, value = "fail", None
            if not run.note:
                bad = sorted({s.value for s in statuses if s is not Status.OK})
                run.note = f"fold(s) ended {', '.join(bad)} after their retries"
        run.state = state
        self.journal.end_trial(run.number, state, value, "" if state == "complete" else run.note)
        self._tell(run, value)
        self._emit()

    def _tell(self, run: TrialRun, value: float | None = None) -> None:
        """Tell the study how ``run`` ended (the journal already says so)."""
        import optuna

        handle = run.handle or trial_object(self.study, run.number)
        for step in sorted(run.scores):
            if step < len(run.folds):
                run.handle = handle
                self._report(run, step)
        handle.set_user_attr("fold_ids", [f.fold_id for f in run.folds])
        handle.set_user_attr("fold_scores", {run.folds[s].fold_id: v for s, v in sorted(run.scores.items())})
        if run.note:
            handle.set_user_attr("note", run.note)
        State = optuna.trial.TrialState
        if run.state == "complete":
            if value is None:
                value = statistics.fmean(run.scores[i] for i in range(len(run.folds)))
            self.study.tell(handle, value)
        else:
            self.study.tell(handle, state=State.PRUNED if run.state == "pruned" else State.FAIL)
        run.handle = None

    # -- counts and the study's errors ---------------------------------------------------
    def _in_flight(self) -> int:
        return sum(1 for r in self.runs.values() if r.state in ("running", "pruning"))

    def counts(self) -> TrialCounts:
        states = [r.state for r in self.runs.values()]
        return TrialCounts(budget=self.opt.trials, complete=states.count("complete"),
                           pruned=states.count("pruned"), failed=states.count("fail"),
                           in_flight=self._in_flight(), skipped_folds=self.skipped)

    def _emit(self) -> None:
        self.events.trials(self.counts())

    @contextmanager
    def _study_writes(self) -> Iterator[None]:
        """A write to the study that fails for the disk (full, read-only) is a StorageError."""
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:
            reason = _storage_reason(exc)
            if reason is None:
                raise
            raise StorageError("the study", self.path, reason) from exc


def _storage_reason(exc: BaseException) -> str | None:
    """The disk's words when ``exc`` (from Optuna or SQLAlchemy) means the disk, else None."""
    text = str(exc).lower()
    words = ("disk is full", "readonly database", "disk i/o error", "unable to open",
             "database or disk is full")
    for e in (exc, exc.__cause__, exc.__context__):
        if e is not None and any(w in str(e).lower() for w in words):
            return str(e).splitlines()[0]
    return None if not any(w in text for w in words) else text


def _of_trial(number: int) -> Callable[[Fold], bool]:
    """Selects the folds of trial ``number``."""
    def match(fold: Fold) -> bool:
        return fold.trial == number
    return match
