"""What the report shows, read from a run directory in one go (read-only; live runs too)."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from foldrunner.errors import FoldrunnerError
from foldrunner.store.journal import Journal
from foldrunner.store.paths import RunPaths
from foldrunner.store.reports import reports_table
from foldrunner.store.results import build_table
from foldrunner.ui.status import RunState, read_state, reading

PathLike = str | os.PathLike[str]

REDACTED = "<redacted>"
"""What the report shows of each ``env`` value of the spec: the page is meant to be sent
around, and ``env`` may hold secrets (the run dir's ``spec.yaml`` is its owner's only)."""


CURVE_TRIALS = 8
"""Trials (the best that reported anything) whose learning curves the report draws."""


@dataclass(frozen=True)
class RunData:
    """One consistent read of a run directory, all that the report draws."""

    paths: RunPaths
    state: RunState
    """Counts by status (``pending``, ``running``, ``retrying`` included), liveness."""
    meta: dict[str, str]
    spec: dict[str, Any]
    """The resolved spec as written (``env`` values redacted); empty when unreadable."""
    results: pd.DataFrame
    """The results table: one row per fold that has an attempt (its final one)."""
    attempts: pd.DataFrame
    """Every attempt: ``fold_id, attempt, trial, status, started_at, ended_at, duration_s,
    gpu, host, error, peak_rss_mb, peak_gpu_mb, pid`` (None: never launched, such as the
    folds of a trial pruned before they started)."""
    reports: pd.DataFrame
    """The report history of the best :data:`CURVE_TRIALS` trials that reported (see
    :func:`foldrunner.store.reports.reports_table`)."""
    metric: str | None
    """The metric the report ranks by: the objective's, else the first numeric one."""
    mode: str
    """``max`` or ``min``."""

    @property
    def name(self) -> str:
        return self.state.name or str(self.spec.get("name", "")) or self.paths.root.name

    @property
    def live(self) -> bool:
        return self.state.liveness.live


def read_run(run_dir: PathLike) -> RunData:
    """Everything the report needs; a :class:`~foldrunner.errors.UsageError` (exit 2)
    when ``run_dir`` is not a run directory."""
    paths = RunPaths(Path(run_dir))
    paths.require_journal()
    state = read_state(paths.root)
    try:
        with reading(paths) as journal:
            meta = journal.meta()
            results = build_table(journal)
            attempts = _attempts(journal)
            spec = _spec(meta.get("spec", ""))
            metric, mode = _objective(spec, results)
            reports = reports_table(journal, _curve_folds(journal, results, metric, mode))
    except sqlite3.Error as exc:
        raise FoldrunnerError(f"cannot read the journal {paths.journal}: {exc}") from None
    return RunData(paths=paths, state=state, meta=meta, spec=spec, results=results,
                   attempts=attempts, reports=reports, metric=metric, mode=mode)


def metric_column(results: pd.DataFrame, metric: str | None) -> str | None:
    """The results column of ``metric``, when it has numbers."""
    col = f"metric_{metric}"
    if metric is None or col not in results.columns:
        return None
    return col if pd.api.types.is_numeric_dtype(results[col]) else None


def trial_means(results: pd.DataFrame, metric: str | None, mode: str) -> pd.DataFrame:
    """Per trial with an ok fold that returned ``metric``: ``mean``, ``std`` and ``n`` of
    it over its ok folds (all replicates), best first."""
    col = metric_column(results, metric)
    if col is None:
        return pd.DataFrame({"mean": [], "std": [], "n": []})
    g = results[results["status"] == "ok"].groupby("trial")[col]
    out = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()})
    return out.dropna(subset=["mean"]).sort_values("mean", ascending=mode == "min", kind="stable")


def pruned_trials(results: pd.DataFrame) -> set[int]:
    """Trials the pruner stopped (an adaptive search): a partial mean ranks with no other."""
    return {int(t) for t in results.loc[results["status"] == "pruned", "trial"].unique()}


def ranked_trials(results: pd.DataFrame, metric: str | None, mode: str) -> list[int]:
    """Every trial with a fold in ``results``, best first: those with ``metric`` ranked
    (as ``results --summary`` does, trials the pruner stopped after them, by their partial
    mean), then the rest by number."""
    pruned = pruned_trials(results)
    means = [int(t) for t in trial_means(results, metric, mode).index]
    ranked = [t for t in means if t not in pruned] + [t for t in means if t in pruned]
    seen = set(ranked)
    return ranked + sorted(int(t) for t in results["trial"].unique() if int(t) not in seen)


def _curve_folds(journal: Journal, results: pd.DataFrame, metric: str | None,
                 mode: str) -> list[str]:
    """The folds whose report history the report draws: those of the best
    :data:`CURVE_TRIALS` trials that reported anything (not the whole history: 20,000
    folds may have reported millions of times)."""
    try:
        reported = [r[0] for r in journal.db.execute("SELECT DISTINCT fold_id FROM reports")]
    except sqlite3.OperationalError:  # a journal written before the history existed
        return []
    trial_of = dict(zip(results["fold_id"], results["trial"]))
    have = {int(trial_of[f]) for f in reported if f in trial_of}
    chosen = set([t for t in ranked_trials(results, metric, mode) if t in have][:CURVE_TRIALS])
    return [f for f in reported if f in trial_of and int(trial_of[f]) in chosen]


def _attempts(journal: Journal) -> pd.DataFrame:
    have = {r[1] for r in journal.db.execute("PRAGMA table_info(attempts)")}
    host = "a.host" if "host" in have else "'' AS host"
    df = pd.read_sql_query(
        "SELECT a.fold_id, a.attempt, f.trial, a.status, a.started_at, a.ended_at,"
        f" a.duration_s, a.gpu, {host}, a.error, a.peak_rss_mb, a.peak_gpu_mb, a.pid"
        " FROM attempts a JOIN folds f ON f.fold_id = a.fold_id ORDER BY a.started_at",
        journal.db,
    )
    for col in ("started_at", "ended_at", "duration_s", "peak_rss_mb", "peak_gpu_mb"):
        df[col] = df[col].astype("float64")
    df["gpu"] = df["gpu"].astype("Int64")
    df["host"] = df["host"].fillna("").astype(str)
    df["error"] = df["error"].fillna("").astype(str)
    return df


def _spec(text: str) -> dict[str, Any]:
    """The resolved spec as a mapping, ``env`` values redacted; empty if unreadable."""
    try:
        spec = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return {}
    if not isinstance(spec, dict):
        return {}
    env = spec.get("env")
    if isinstance(env, dict):
        spec["env"] = {k: REDACTED for k in env}
    return spec


def _objective(spec: dict[str, Any], results: pd.DataFrame) -> tuple[str | None, str]:
    obj = spec.get("objective")
    numeric = [
        c[len("metric_"):] for c in results.columns
        if c.startswith("metric_") and pd.api.types.is_numeric_dtype(results[c])
        and c != "metric_epoch"
    ]
    if isinstance(obj, dict) and obj.get("metric"):
        mode = "min" if obj.get("mode") == "min" else "max"
        return str(obj["metric"]), mode
    return (numeric[0] if numeric else None), "max"


def run_span(data: RunData) -> tuple[float, float] | None:
    """``(first start, last end)`` as ``time.time()`` (the end is the snapshot's time
    while the run is live); None before any attempt."""
    a = data.attempts
    if a.empty:
        return None
    start = float(a["started_at"].min())
    ends = a["ended_at"].dropna()
    end = float(ends.max()) if len(ends) else start
    if data.live:
        end = max(end, data.state.read_at)
    return start, end
