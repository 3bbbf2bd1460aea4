"""What ``foldrunner run`` prints: one plain line per ended attempt, and a summary.

Plain lines carry no escape codes, so cron mail and log files stay readable. A write
to a closed stdout (a closed pipe, a gone terminal) never ends the run.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import pandas as pd

from .outcome import AttemptResult, Status
from .plan import Fold
from .supervisor import Slot


def _fmt_metrics(metrics: dict[str, Any], limit: int = 4) -> str:
    parts = []
    for k, v in list(metrics.items())[:limit]:
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


class PlainLines:
    """Prints one line per ended attempt to ``stream`` (default: stdout)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.finished = 0
        self.broken = False

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stdout

    def _print(self, text: str, err: bool = False) -> None:
        if self.broken:
            return
        try:
            stream = sys.stderr if err else self._out()
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):
            self.broken = True

    def note(self, text: str) -> None:
        self._print(f"foldrunner: {text}", err=True)

    def attempt_started(self, fold: Fold, attempt: int, slot: Slot) -> None:
        pass

    def attempt_ended(self, fold: Fold, result: AttemptResult, final: bool) -> None:
        gpu = "" if result.gpu is None else f" gpu {result.gpu}"
        head = f"{fold.fold_id} attempt {result.attempt}: {result.status.value} in {result.duration_s:.1f}s{gpu}"
        if result.status is Status.OK:
            self.finished += 1
            self._print(f"{head}  {_fmt_metrics(result.metrics)}".rstrip())
        else:
            tail = "" if final else "; will retry"
            self._print(f"{head}: {result.error}{tail}")

    def table(self, text: str) -> None:
        self._print(text)

    def summary(self, df: pd.DataFrame) -> None:
        counts = df["status"].value_counts().to_dict() if len(df) else {}
        planned = int(df.attrs.get("planned", len(df)))
        parts = [f"{n} {s}" for s, n in sorted(counts.items())]
        missing = planned - len(df)
        if missing > 0:
            parts.append(f"{missing} not started")
        where = df.attrs.get("run_dir")
        tail = f"; results in {where}" if where else ""
        self._print(f"done: {planned} folds: " + ", ".join(parts) + tail)
