"""Every path of a run directory, derived in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    """The layout of ``RUN_DIR``."""

    root: Path

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def journal(self) -> Path:
        return self.root / "journal.sqlite"

    @property
    def lock(self) -> Path:
        return self.root / "run.lock"

    @property
    def results_csv(self) -> Path:
        return self.root / "results.csv"

    @property
    def results_parquet(self) -> Path:
        return self.root / "results.parquet"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log(self, fold_id: str, attempt: int) -> Path:
        """``logs/<fold>.<attempt>.log``: the captured stdout and stderr of one attempt."""
        return self.logs / f"{fold_id}.{attempt}.log"

    @property
    def preflight_log(self) -> Path:
        return self.logs / "preflight.log"

    def make(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
