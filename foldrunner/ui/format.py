"""How the command line writes times, reports, counts and attempts, in one place.

Shared by ``foldrunner status`` (:mod:`foldrunner.ui.status`), the live view and the
plain lines of ``foldrunner run`` (:mod:`foldrunner.ui.live`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from foldrunner.wire.outcome import Status

if TYPE_CHECKING:  # only for annotations: `foldrunner status` needs neither pandas nor pydantic
    import pandas as pd

    from foldrunner.config.plan import Fold
    from foldrunner.wire.outcome import AttemptResult

REPORT_ITEMS = 8
"""Values of a report that ``status`` shows (the first ones, in the order reported)."""
METRIC_ITEMS = 4
"""Metrics that the line of an ended attempt shows (the first ones)."""

#: the order in which ``status`` lists its counts
COUNT_ORDER = ("ok", "running", "retrying", "error", "timeout", "crashed", "memory",
               "cancelled", "pruned", "interrupted", "pending")


def clock(seconds: float) -> str:
    """``7 -> "0:07"``, ``182 -> "3:02"``, ``3902 -> "1:05:02"``."""
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_report(report: Mapping[str, Any], limit: int = REPORT_ITEMS, *,
                  count_rest: bool = True) -> str:
    """``epoch=3 loss=0.1234``: floats to 4 significant digits, the first ``limit`` items,
    then (with ``count_rest``) how many more there are: ``(+2 more)``."""
    parts = []
    for k, v in list(report.items())[:limit]:
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    if count_rest and len(report) > limit:
        parts.append(f"(+{len(report) - limit} more)")
    return " ".join(parts)


def dash(value: object) -> str:
    """A table cell: ``"-"`` for None, else the value as text."""
    return "-" if value is None else str(value)


def ordered_counts(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """``counts`` in :data:`COUNT_ORDER`, other keys after them by name."""
    return sorted(counts.items(), key=lambda kv: (
        COUNT_ORDER.index(kv[0]) if kv[0] in COUNT_ORDER else len(COUNT_ORDER), kv[0]))


def ended_line(fold: Fold, result: AttemptResult, final: bool) -> str:
    """The line of one ended attempt: its status, duration, GPU, metrics or error."""
    gpu = "" if result.gpu is None else f" gpu {result.gpu}"
    head = f"{fold.fold_id} attempt {result.attempt}: {result.status.value} in {result.duration_s:.1f}s{gpu}"
    if result.status is Status.OK:
        metrics = format_report(result.metrics, METRIC_ITEMS, count_rest=False)
        return f"{head}  {metrics}".rstrip()
    tail = "" if final else "; will retry"
    return f"{head}: {result.error}{tail}"


def summary_line(df: pd.DataFrame) -> str:
    """``done: N folds: 3 ok, 1 error; results in RUN_DIR``."""
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    planned = int(df.attrs.get("planned", len(df)))
    parts = [f"{n} {s}" for s, n in sorted(counts.items())]
    missing = planned - len(df)
    if missing > 0:
        parts.append(f"{missing} not started")
    where = df.attrs.get("run_dir")
    tail = f"; results in {where}" if where else ""
    return f"done: {planned} folds: " + ", ".join(parts) + tail
