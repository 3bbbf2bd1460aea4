"""Every path of a run directory, derived in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError


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
    def zygote_status(self) -> Path:
        """Where the zygote says ``ready: ...`` or ``error: ...``."""
        return self.root / "zygote.status"

    def require_journal(self) -> Path:
        """The journal's path; a UsageError when this is not a run directory."""
        if not self.journal.exists():
            raise UsageError(f"{self.root} is not a foldrunner run directory: no journal.sqlite in it")
        return self.journal

    @property
    def preflight_log(self) -> Path:
        return self.logs / "preflight.log"

    def make(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
