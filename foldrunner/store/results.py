"""The results table (one row per fold: its final attempt) and the per-trial summary."""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from foldrunner.errors import StorageError, UsageError, storage_error
from foldrunner.store.journal import Journal
from foldrunner.store.paths import PUBLIC, RunPaths, atomic_write

log = logging.getLogger("foldrunner")

#: the columns every results table has, in this order (then param_*, metric_*, extras)
CORE_COLUMNS = [
    "trial", "replicate", "fold", "fold_id", "seed", "status", "attempts", "duration_s",
    "gpu", "peak_rss_mb", "peak_gpu_mb", "error",
]
EXTRA_COLUMNS = ["host", "node", "exit_code", "signal", "lingered", "started_at", "ended_at", "log"]
FORMATS = ("table", "csv", "json", "markdown")


def build_table(journal: Journal) -> pd.DataFrame:
    """One row per fold that has an attempt: its final attempt, in plan order."""
    return _table(_final_attempts(journal))


def _final_attempts(journal: Journal) -> Iterator[sqlite3.Row]:
    """Each fold that has an attempt with its final attempt (the highest number), in plan
    order, one row at a time.

    The orchestrator rebuilds the table from the journal every few seconds, and Python
    keeps the pages of the small objects it frees for reuse (pymalloc): the most one
    build holds at once stays in the orchestrator's RSS, and grows with the table.
    Fetching every fold and every attempt first (``journal.folds()``, ``attempts()``: a
    ``sqlite3.Row`` of every column per fold and per attempt) held 1.7 KiB of small
    objects per fold at once; streamed, one row at a time and only the columns the table
    shows, 0.65 KiB (``scripts/soak.py``: the RSS of Python's small objects grew by
    1.2-1.6 MiB over the second 1,000 folds, now by 0.4 MiB).
    """
    have = {r[1] for r in journal.db.execute("PRAGMA table_info(attempts)")}
    host_node = ", ".join(f"a.{c}" if c in have else f"'' AS {c}" for c in ("host", "node"))
    return journal.db.execute(
        "SELECT f.trial, f.replicate, f.fold, f.fold_id, f.seed, f.params, a.status,"
        " a.attempt, a.duration_s, a.gpu, a.peak_rss_mb, a.peak_gpu_mb, a.error, a.exit_code,"
        f" a.signal, a.lingered, a.started_at, a.ended_at, a.log_path, a.metrics, {host_node}"
        " FROM folds f JOIN attempts a ON a.fold_id = f.fold_id AND a.attempt ="
        " (SELECT MAX(attempt) FROM attempts WHERE fold_id = f.fold_id) ORDER BY f.idx"
    )


def _table(finals: Iterable[sqlite3.Row]) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    params_seen: dict[str, None] = {}
    metrics_seen: dict[str, None] = {}
    param_cells: dict[str, dict[str, Any]] = {}  # by params text: the folds of a trial share it
    for a in finals:
        params = param_cells.get(a["params"])
        if params is None:
            params = {f"param_{k}": _cell(v) for k, v in json.loads(a["params"]).items()}
            param_cells[a["params"]] = params
        metrics = json.loads(a["metrics"] or "{}")
        params_seen.update(dict.fromkeys(params))
        metrics_seen.update(dict.fromkeys(metrics))
        row: dict[str, Any] = {
            "trial": a["trial"], "replicate": a["replicate"], "fold": a["fold"],
            "fold_id": a["fold_id"], "seed": a["seed"], "status": a["status"],
            "attempts": a["attempt"], "duration_s": a["duration_s"], "gpu": a["gpu"],
            "peak_rss_mb": a["peak_rss_mb"], "peak_gpu_mb": a["peak_gpu_mb"],
            "error": a["error"] or "", "host": a["host"], "node": a["node"],
            "exit_code": a["exit_code"], "signal": a["signal"],
            "lingered": bool(a["lingered"]), "started_at": a["started_at"],
            "ended_at": a["ended_at"], "log": a["log_path"],
        }
        row.update(params)
        row.update({f"metric_{k}": v for k, v in metrics.items()})
        rows.append(row)
    columns = (
        CORE_COLUMNS
        + list(params_seen)
        + [f"metric_{k}" for k in metrics_seen]
        + EXTRA_COLUMNS
    )
    df = pd.DataFrame(rows, columns=columns)
    for col in ("gpu", "exit_code"):
        df[col] = df[col].astype("Int64")
    for col in ("duration_s", "peak_rss_mb", "peak_gpu_mb"):  # all None would make them object
        df[col] = df[col].astype("float64")
    return df


def _cell(v: Any) -> Any:
    """Parameters that are lists or mappings become their JSON text in the table."""
    return json.dumps(v) if isinstance(v, (list, dict)) else v


CSV_CHUNK_ROWS = 500
"""Rows of the table that ``to_csv`` turns into text at a time. pandas makes a Python
object of every cell of a chunk at once (by default 100,000 cells: the whole table of
a run of a few thousand folds, 1.8 MiB of them at 2,000 folds), and the orchestrator's
RSS keeps the most it ever held (see :func:`_final_attempts`); 500 rows at a time hold
the same whatever the table's length (0.46 MiB with the soak's 25 columns). The file
is the same."""

#: parquet files already warned about (once each, until one is written again)
_PARQUET_WARNED: set[Path] = set()


def write_results(df: pd.DataFrame, paths: RunPaths) -> list[Path]:
    """Write ``results.csv`` (and ``results.parquet`` where pyarrow is installed), atomically.

    The csv is always written. Values that change type within a column (a number in one
    fold, ``"n/a"`` in another) go to the parquet file as text; ``df`` itself is left as
    it is. Should the parquet file still fail for a reason other than the disk (a
    ``StorageError`` is raised, like the csv's), it is skipped with one warning, and a stale
    one is removed: it never disagrees with the csv.
    """
    written = [_write_file(paths.results_csv,
                           lambda p: df.to_csv(p, index=False, chunksize=CSV_CHUNK_ROWS))]
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return written
    table = parquet_safe(df)
    try:
        written.append(_write_file(
            paths.results_parquet, lambda p: table.to_parquet(p, index=False)))
    except StorageError:  # the disk or the directory: an error of the run dir, as for the csv
        raise
    except Exception as exc:  # noqa: BLE001 - any other failure costs the parquet file only
        _skip_parquet(paths.results_parquet, exc)
    else:
        _PARQUET_WARNED.discard(paths.results_parquet)
    return written


def _write_file(target: Path, write: Callable[[Path], object]) -> Path:
    """``atomic_write(target, write, PUBLIC)``; an OSError (a full disk, a read-only run
    dir) is a StorageError that names ``target``."""
    try:
        return atomic_write(target, write, PUBLIC)
    except OSError as exc:
        raise storage_error("the results file", target, exc) from exc


def _skip_parquet(path: Path, exc: Exception) -> None:
    """Remove a stale ``path``; say once why it is not written."""
    path.unlink(missing_ok=True)
    if path in _PARQUET_WARNED:
        return
    _PARQUET_WARNED.add(path)
    log.warning("%s not written (the results are in results.csv): %s: %s",
                path, type(exc).__name__, exc)


def parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with each object column that pyarrow cannot convert as it is (mixed types)
    turned to text, missing values kept missing; a shallow copy, ``df`` is unchanged."""
    import pyarrow as pa

    text: dict[str, Any] = {}
    for name in df.columns[df.dtypes == object]:
        try:
            pa.array(df[name], from_pandas=True)
        except Exception:  # noqa: BLE001 - whatever pyarrow refuses goes as text
            text[str(name)] = df[name].map(_text)
    return df.assign(**text) if text else df


def _text(value: Any) -> str | None:
    """A cell as text; None for a missing value."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def load_results(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The results table of a run directory, read from its journal (live runs too)."""
    with Journal(RunPaths(Path(run_dir)).require_journal(), readonly=True) as journal:
        return build_table(journal)


def summarize(df: pd.DataFrame, metric: str | None = None, mode: str = "max") -> pd.DataFrame:
    """One row per trial: its params, ok/failed counts, mean and std of each metric.

    Means and stds are over the trial's ``ok`` folds (all replicates). Ranked by
    ``metric`` (``mode`` max or min) when given, trials without it last. With pruned
    trials (an adaptive search), only complete trials are ranked; pruned ones follow,
    unranked, with their partial mean (over the folds they ran) and ``folds_pruned``
    (see :func:`_with_pruned`).
    """
    if len(df) and (df["status"] == "pruned").any():
        return _with_pruned(df, metric, mode)
    params = [c for c in df.columns if c.startswith("param_")]
    metrics = [
        c for c in df.columns if c.startswith("metric_") and pd.api.types.is_numeric_dtype(df[c])
    ]
    rows = []
    for trial, g in df.groupby("trial", sort=True):
        ok = g[g["status"] == "ok"]
        row: dict[str, Any] = {"trial": trial}
        row.update({p: g[p].iloc[0] for p in params})
        row["folds_ok"] = int(len(ok))
        row["folds_failed"] = int(len(g) - len(ok))
        for m in metrics:
            name = m[len("metric_") :]
            row[f"{name}_mean"] = ok[m].mean() if len(ok) else float("nan")
            row[f"{name}_std"] = ok[m].std(ddof=1) if len(ok) > 1 else float("nan")
        rows.append(row)
    out = pd.DataFrame(rows)
    if metric and f"{metric}_mean" in out.columns:
        out = out.sort_values(
            f"{metric}_mean", ascending=(mode == "min"), na_position="last", kind="stable"
        )
        out.insert(0, "rank", range(1, len(out) + 1))
    return out.reset_index(drop=True)


def _with_pruned(df: pd.DataFrame, metric: str | None, mode: str) -> pd.DataFrame:
    """The summary of a search that pruned trials: a ``state`` column (``complete``: every
    fold ok; ``pruned``; ``failed``), ``folds_pruned``; complete trials ranked by the
    objective, then pruned ones (most folds first, then by their partial mean), then failed."""
    pruned = df.groupby("trial")["status"].agg(lambda s: int((s == "pruned").sum()))
    out = summarize(df[df["status"] != "pruned"], None, mode)
    out = out.set_index("trial").reindex(sorted(df["trial"].unique())).reset_index()
    ok_all = df.groupby("trial")["status"].agg(lambda s: bool((s == "ok").all()))
    out["folds_pruned"] = out["trial"].map(pruned).astype(int)
    out["folds_ok"] = out["folds_ok"].fillna(0).astype(int)
    out["folds_failed"] = out["folds_failed"].fillna(0).astype(int)
    out["state"] = ["complete" if ok_all[t] else "pruned" if pruned[t] else "failed" for t in out["trial"]]
    params = [c for c in df.columns if c.startswith("param_")]
    for p in params:  # a trial pruned before any fold ended has its params from its rows
        out[p] = out["trial"].map(df.groupby("trial")[p].first())
    order = {"complete": 0, "pruned": 1, "failed": 2}
    key = f"{metric}_mean" if metric else None
    sign = 1.0 if mode == "min" else -1.0
    def sort_key(row: Any) -> tuple[Any, ...]:
        value = row[key] if key and key in out.columns else float("nan")
        value = float("inf") if pd.isna(value) else sign * float(value)
        depth = -row["folds_ok"] if row["state"] == "pruned" else 0
        return (order[row["state"]], depth, value, row["trial"])
    out = out.loc[sorted(out.index, key=lambda i: sort_key(out.loc[i]))].reset_index(drop=True)
    cols = ["trial", *params, "state", "folds_ok", "folds_pruned", "folds_failed"]
    out = out[cols + [c for c in out.columns if c not in cols]]
    if key and key in out.columns:
        complete = out["state"] == "complete"
        ranks = pd.Series(pd.NA, index=out.index, dtype="Int64")
        ranks[complete] = range(1, int(complete.sum()) + 1)
        out.insert(0, "rank", ranks)
    return out


def render(df: pd.DataFrame, fmt: str) -> str:
    """The table as text: ``table`` (aligned), ``csv``, ``json`` (records) or ``markdown``."""
    if fmt == "csv":
        return str(df.to_csv(index=False))
    if fmt == "json":
        return str(df.to_json(orient="records", indent=2))
    if fmt == "markdown":
        return str(df.to_markdown(index=False, floatfmt=".4g"))
    if fmt == "table":
        return str(df.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    raise UsageError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
