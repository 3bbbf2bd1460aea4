"""A run directory taken for a new run or a resume: its checks, its journal, its spec.yaml.

A directory that holds a journal is never overwritten: only ``--resume`` opens it again,
and only with a spec whose plan is the journal's (:func:`open_journal` says how they
differ otherwise). A resume first closes the attempts a dead orchestrator left
``running`` (:func:`close_interrupted`). An adaptive search's study is opened (and, on a
resume, brought in line with the journal) by :func:`open_search`.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from foldrunner.config.plan import Fold, Plan
from foldrunner.config.spec import Spec
from foldrunner.engine.events import Events
from foldrunner.errors import RunDirError, storage_error
from foldrunner.search.source import TrialSource
from foldrunner.store.journal import Journal, journal_storage_error
from foldrunner.store.paths import RunPaths, atomic_write
from foldrunner.wire.outcome import AttemptResult, Status


def check_run_dir(paths: RunPaths, resume: bool) -> None:
    """A RunDirError for a directory that holds a run, unless this is a resume."""
    if paths.journal.exists() and not resume:
        raise RunDirError(
            f"run directory {paths.root} already holds a run (journal.sqlite): "
            "add --resume to finish it, or choose another --run-dir"
        )


@contextmanager
def open_journal_file(paths: RunPaths) -> Iterator[Journal]:
    """``Journal(paths.journal)``; a journal that cannot be created or opened for writing
    (a full disk, a read-only run dir) is a StorageError."""
    try:
        journal = Journal(paths.journal)
    except (sqlite3.Error, OSError) as exc:
        error = journal_storage_error(paths.journal, exc)
        if error is None:
            raise
        raise error from exc
    with journal:
        yield journal


def open_journal(journal: Journal, spec: Spec, plan: Plan, resume: bool) -> str:
    """The run's id: the journal's for a resume of the same plan (a RunDirError for another
    plan), else a new one, with the journal initialised for ``spec`` and ``plan``."""
    meta = journal.meta()
    if resume and "plan_hash" in meta:
        if meta["plan_hash"] != plan.hash:
            raise RunDirError(_plan_difference(journal, plan, meta["plan_hash"]))
        return meta["run_id"]
    run_id = uuid.uuid4().hex[:12]
    journal.initialise(run_id=run_id, spec_yaml=spec.to_yaml(), plan=plan, name=spec.name)
    return run_id


def _plan_difference(journal: Journal, plan: Plan, old_hash: str) -> str:
    """Why a resume with ``plan`` is refused: the first fold that differs, or the counts."""
    if plan.adaptive is not None or old_hash.startswith("a"):
        return (f"cannot resume: this spec's plan ({plan.hash}) differs from the journal's "
                f"({old_hash}): an adaptive search resumes only with the same search space, "
                "sampler, seed, pruner, params, cv and objective (trials may be raised). Resume "
                "with the spec in the run directory's spec.yaml, or start a new run dir.")
    old = {r["fold_id"]: (r["seed"], json.loads(r["params"])) for r in journal.folds()}
    new = {f.fold_id: (f.seed, json.loads(json.dumps(dict(f.params), default=repr))) for f in plan.folds}
    diffs = []
    if set(old) != set(new):
        diffs.append(f"the journal has {len(old)} folds, this spec gives {len(new)}")
    for fid in sorted(set(old) & set(new)):
        if old[fid] != new[fid]:
            diffs.append(f"fold {fid}: journal {old[fid]}, spec {new[fid]}")
            break
    what = "; ".join(diffs) or "the plan hash differs"
    return (
        f"cannot resume: this spec's plan ({plan.hash}) differs from the journal's ({old_hash}): "
        f"{what}. Resume with the spec in the run directory's spec.yaml, or start a new run dir."
    )


def close_interrupted(journal: Journal) -> None:
    """Attempts left 'running' by a dead orchestrator end as cancelled (interrupted)."""
    now = time.time()
    for a in journal.attempts():
        if a["status"] == Status.RUNNING.value:
            journal.end_attempt(
                AttemptResult(
                    fold_id=a["fold_id"], attempt=a["attempt"], status=Status.CANCELLED,
                    started_at=a["started_at"], ended_at=now,
                    duration_s=max(0.0, now - a["started_at"]), gpu=a["gpu"], pid=a["pid"],
                    error="interrupted: the orchestrator ended while this attempt ran",
                    log_path=a["log_path"],
                )
            )


def write_spec(paths: RunPaths, spec: Spec) -> None:
    """``RUN_DIR/spec.yaml``: the resolved spec, written atomically (0600: it holds ``env``)."""
    text = spec.to_yaml()
    try:
        atomic_write(paths.spec, lambda tmp: Path(tmp).write_text(text))
    except OSError as exc:
        raise storage_error("the spec file", paths.spec, exc) from exc


@dataclass
class Search:
    """An adaptive search's share of a run: its source of folds and where it starts."""

    source: TrialSource
    work: list[tuple[Fold, int, int]]
    """What trials in flight when the last run stopped still need."""
    total: int
    """Folds in all when every trial has run (each pruned one has a row)."""
    done: int
    """Folds already ended for good (``ok`` or ``pruned``)."""


def open_search(spec: Spec, plan: Plan, journal: Journal, paths: RunPaths, resume: bool,
                events: Events, notes: Callable[[str], None] | None = None) -> Search | None:
    """The study and source of an adaptive search (None for another plan); on a resume the
    study is brought in line with the journal first (see :mod:`foldrunner.search.study`)."""
    if plan.adaptive is None:
        return None
    source = TrialSource.open(spec, plan.adaptive, journal, paths.root, resume, events, notes)
    work = source.initial_work(journal.attempt_counts(), journal.used_attempts())
    done = sum(1 for run in source.runs.values() for st in run.final.values()
               if st.value in (Status.OK.value, Status.PRUNED.value))
    return Search(source, work, plan.adaptive.max_folds, done)
