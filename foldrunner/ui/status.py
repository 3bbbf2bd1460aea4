"""``foldrunner status``: the state of a run directory, read from outside.

Everything here reads, nothing writes: the journal is opened read-only (a WAL reader
never blocks the orchestrator that writes it), so it works while the run is live, from
another terminal. Whether the run is live comes from the pid that the orchestrator
writes into ``RUN_DIR/run.lock`` while it holds the lock (see :mod:`foldrunner.orchestrate.lock`).
The logs of its attempts are read by :mod:`foldrunner.ui.logs`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from foldrunner.errors import FoldrunnerError
from foldrunner.store.journal import Journal
from foldrunner.store.paths import RunPaths
from foldrunner.ui.format import clock, dash, format_report, ordered_counts
from foldrunner.wire.outcome import Status

if TYPE_CHECKING:
    from foldrunner.config.spec import Spec

LOCK_CLOCK_SLACK = 2.0
"""A process created more than this many seconds after ``run.lock`` was last written is not
the one that wrote it: its pid was reused after the orchestrator died."""

PathLike = str | os.PathLike[str]


# -- is the run live? ----------------------------------------------------------------
@dataclass(frozen=True)
class Liveness:
    """Whether an orchestrator holds the run directory, and why we think so."""

    live: bool
    pid: int | None
    why: str


def run_liveness(run_dir: PathLike) -> Liveness:
    """Read ``run.lock``: live when the pid in it is a running process that was already
    running when the file was written (so not a reused pid)."""
    lock = RunPaths(Path(run_dir)).lock
    try:
        text = lock.read_text(errors="replace").strip()
        written = lock.stat().st_mtime
    except FileNotFoundError:
        return Liveness(False, None, "no run.lock: no run has held this directory")
    except OSError as exc:
        return Liveness(False, None, f"cannot read {lock}: {exc.strerror or exc}")
    if not text:
        return Liveness(False, None, "run.lock is empty: the last run has ended")
    if not text.isdigit():
        return Liveness(False, None, f"run.lock holds {text[:20]!r}, not a pid")
    pid = int(text)
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return Liveness(False, pid, f"orchestrator pid {pid} has ended")
        created = proc.create_time()
    except psutil.NoSuchProcess:
        return Liveness(False, pid, f"orchestrator pid {pid} has ended")
    except psutil.AccessDenied:  # it exists; another user's process
        return Liveness(True, pid, f"orchestrator pid {pid} is running")
    if created > written + LOCK_CLOCK_SLACK:
        return Liveness(
            False, pid, f"orchestrator pid {pid} has ended (that pid is now another process)"
        )
    return Liveness(True, pid, f"orchestrator pid {pid} is running")


# -- the state of a run --------------------------------------------------------------
@dataclass(frozen=True)
class RunningAttempt:
    """An attempt the journal shows as running."""

    fold_id: str
    attempt: int
    started_at: float
    gpu: int | None
    pid: int | None
    log_path: str
    report: dict[str, Any] = field(default_factory=dict)
    report_at: float | None = None


@dataclass(frozen=True)
class RunState:
    """What ``foldrunner status`` shows: one consistent read of the journal."""

    root: Path
    name: str
    total: int
    counts: dict[str, int]
    liveness: Liveness
    running: list[RunningAttempt]
    read_at: float
    trials: dict[str, int] = field(default_factory=dict)
    """An adaptive search's trials by state (empty for another search)."""
    budget: int | None = None
    """An adaptive search's trials in all (``search.optuna.trials``), where the spec says."""


@contextmanager
def reading(paths: RunPaths) -> Iterator[Journal]:
    """The journal, read-only, inside one read transaction (a consistent snapshot)."""
    paths.require_journal()
    try:
        journal = Journal(paths.journal, readonly=True)
    except sqlite3.Error as exc:
        raise FoldrunnerError(f"cannot open the journal {paths.journal}: {exc}") from None
    try:
        journal.db.execute("BEGIN")
        yield journal
    except sqlite3.Error as exc:
        raise FoldrunnerError(f"cannot read the journal {paths.journal}: {exc}") from None
    finally:
        journal.close()


def run_spec(run_dir: PathLike) -> Spec | None:
    """The run's resolved spec (``RUN_DIR/spec.yaml``), or None where it is missing or
    cannot be read."""
    from foldrunner.config.spec import load_spec

    try:
        return load_spec(RunPaths(Path(run_dir)).spec)
    except (FoldrunnerError, OSError):
        return None


def _retry_policy(run_dir: Path) -> tuple[int, frozenset[str]] | None:
    """``(attempts, statuses retried)`` from the run's resolved spec, or None if unreadable."""
    spec = run_spec(run_dir)
    if spec is None:
        return None
    return spec.retry.attempts, frozenset(spec.retry.on)


def read_state(run_dir: PathLike) -> RunState:
    """Counts by status of each fold (its latest attempt), the running attempts, liveness.

    A fold with no attempt is ``pending``. While the run is live, a fold whose latest
    attempt failed in a way ``retry.on`` names, with attempts left, is ``retrying``; an
    attempt left ``running`` by an orchestrator that is gone is ``interrupted``.
    """
    paths = RunPaths(Path(run_dir))
    liveness = run_liveness(paths.root)
    with reading(paths) as journal:
        meta = journal.meta()
        folds = journal.folds()
        attempts = journal.attempts()
        searched = journal.search_trials()
    read_at = time.time()
    policy = _retry_policy(paths.root) if liveness.live else None
    latest: dict[str, sqlite3.Row] = {}
    for row in attempts:  # ordered by fold_id, attempt: the last one wins
        latest[row["fold_id"]] = row
    counts: dict[str, int] = {}
    for f in folds:
        last = latest.get(f["fold_id"])
        if last is None:
            key = "pending"
        elif last["status"] == Status.RUNNING.value:
            key = "running" if liveness.live else "interrupted"
        elif policy is not None and last["status"] in policy[1] and last["attempt"] < policy[0]:
            key = "retrying"
        else:
            key = last["status"]
        counts[key] = counts.get(key, 0) + 1
    running = [
        RunningAttempt(
            fold_id=a["fold_id"], attempt=a["attempt"], started_at=a["started_at"],
            gpu=a["gpu"], pid=a["pid"], log_path=a["log_path"],
            report=_report(a["report"]), report_at=a["report_at"],
        )
        for a in attempts
        if a["status"] == Status.RUNNING.value
    ]
    trials: dict[str, int] = {}
    for t in searched:  # running: in flight (interrupted when the run is not live)
        key = {"running": "in flight", "pruning": "in flight", "fail": "failed"}.get(t["state"], t["state"])
        key = "interrupted" if key == "in flight" and not liveness.live else key
        trials[key] = trials.get(key, 0) + 1
    budget = None
    if searched:
        spec = run_spec(paths.root)
        opt = spec.search.optuna if spec is not None and spec.search is not None else None
        budget = opt.trials if opt is not None else None
    return RunState(
        root=paths.root, name=meta.get("name", ""), total=len(folds), counts=counts,
        liveness=liveness, running=running, read_at=read_at, trials=trials, budget=budget,
    )


def _report(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"report": text}
    return value if isinstance(value, dict) else {"report": value}


def render_state(state: RunState) -> str:
    """The text of ``foldrunner status``."""
    lv = state.liveness
    lines = [
        f"run {state.name or '?'} in {state.root}",
        f"state: {'live' if lv.live else 'not live'} ({lv.why})",
    ]
    listed = ", ".join(f"{n} {key}" for key, n in ordered_counts(state.counts) if n)
    if state.trials:
        asked = sum(state.trials.values())
        of = f" of {state.budget}" if state.budget is not None else ""
        order = ("complete", "pruned", "in flight", "interrupted", "failed")
        parts = [f"{state.trials.get(k, 0)} {k}" for k in order if k in state.trials or k in order[:3]]
        lines.append(f"trials: {asked}{of} asked: {', '.join(parts)}")
        lines.append(f"folds: {state.total} of the asked trials" + (f": {listed}" if listed else ""))
    else:
        lines.append(f"folds: {state.total} in all" + (f": {listed}" if listed else ""))
    if not state.running:
        if lv.live:
            lines.append("running: none")
        return "\n".join(lines)
    if lv.live:
        lines.append("running:")
    else:
        lines.append("left running by an orchestrator that is gone (--resume ends and reruns them):")
    rows = [["fold", "attempt", "gpu", "pid", "elapsed", "report"]]
    for r in sorted(state.running, key=lambda r: r.started_at):
        report = format_report(r.report) or "-"
        if r.report_at is not None and r.report:
            report += f" ({clock(state.read_at - r.report_at)} ago)"
        rows.append([
            r.fold_id, str(r.attempt), dash(r.gpu), dash(r.pid),
            clock(state.read_at - r.started_at), report,
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.rjust(w) if 0 < i < 5 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  " + "  ".join(cells + [row[-1]]))
    return "\n".join(lines)


def run_status(run_dir: PathLike) -> str:
    """``foldrunner status RUN_DIR``: counts by status, liveness, the running folds."""
    return render_state(read_state(run_dir))
