"""The report history as a table: every kept ``ctx.report`` call of every attempt.

Which calls the journal keeps (all of them up to a thousand per attempt, then thinner) is
the recorder's policy: see :mod:`foldrunner.store.recorder`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path

import pandas as pd

from foldrunner.store.journal import Journal
from foldrunner.store.paths import RunPaths

#: the columns every report history table has, in this order (then ``metric_*``)
REPORT_COLUMNS = ["fold_id", "trial", "replicate", "fold", "attempt", "seq", "time_s"]


def reports_table(journal: Journal, fold_ids: Collection[str] | None = None) -> pd.DataFrame:
    """One row per kept ``ctx.report`` call (of the folds ``fold_ids`` only, when given):
    :data:`REPORT_COLUMNS`, then one ``metric_<name>`` column per reported name, ordered
    by fold, attempt and call.

    SQLite's JSON functions take the values apart (a Python loop over 400,000 calls took
    five times as long): a reported ``True`` reads as 1.
    """
    where = ""
    args: tuple[str, ...] = ()
    if fold_ids is not None:
        args = tuple(fold_ids)
        where = f" WHERE r.fold_id IN ({', '.join('?' * len(args))})" if args else " WHERE 0"
    if not _has_reports(journal):
        return pd.DataFrame({c: pd.Series(dtype=_EMPTY_DTYPES.get(c, "Int64")) for c in REPORT_COLUMNS})
    names = [r[0] for r in journal.db.execute(
        f"SELECT DISTINCT j.key FROM reports r, json_each(r.metrics) j{where}", args)]
    picks, pick_args = [], []
    for n, name in enumerate(names):
        if _PLAIN_KEY.fullmatch(name):
            picks.append(f"json_extract(r.metrics, '$.\"{name}\"') AS m{n}")
        else:  # a name a JSON path cannot spell: looked up by value
            picks.append(f"(SELECT value FROM json_each(r.metrics) WHERE key = ?) AS m{n}")
            pick_args.append(name)
    query = (
        "SELECT r.fold_id, f.trial, f.replicate, f.fold, r.attempt, r.seq, r.time_s"
        + "".join(f", {p}" for p in picks)
        + f" FROM reports r LEFT JOIN folds f ON f.fold_id = r.fold_id{where}"
        " ORDER BY r.fold_id, r.attempt, r.seq"
    )
    df = pd.read_sql_query(query, journal.db, params=(*pick_args, *args))
    df.columns = [*REPORT_COLUMNS, *(f"metric_{name}" for name in names)]
    for c in ("trial", "replicate", "fold", "attempt", "seq"):
        df[c] = df[c].astype("Int64")
    df["time_s"] = df["time_s"].astype("float64")
    return df


_EMPTY_DTYPES = {"fold_id": "object", "time_s": "float64"}
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_ .:/@+-]*")
"""Metric names spelled as they are inside a quoted JSON path label."""


def _has_reports(journal: Journal) -> bool:
    """Whether the journal has the report history (one written before it has not)."""
    return journal.db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'reports'").fetchone() is not None


def load_reports(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Every ``ctx.report`` call the journal of ``run_dir`` kept (live runs too): one row
    per call with ``fold_id, trial, replicate, fold, attempt, seq`` (the call's 0-based
    index within its attempt), ``time_s`` (seconds since the attempt started) and one
    ``metric_<name>`` column per reported name."""
    with Journal(RunPaths(Path(run_dir)).require_journal(), readonly=True) as journal:
        return reports_table(journal)
