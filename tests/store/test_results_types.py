"""The results table never aborts a run: values that change type between folds (a number
in one fold, "n/a" in another; a grid over ``[1, "a"]``) reach results.csv as they are and
results.parquet as text; a parquet file that still cannot be written is skipped with one
warning, and no stale one is left to disagree with the csv."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import foldrunner
from conftest import base_spec

pytestmark = pytest.mark.timeout(120)

pytest.importorskip("pyarrow")


def read_csv(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "results.csv", keep_default_na=False)


def test_a_metric_that_changes_type_between_folds_does_not_abort_the_run(tmp_path: Path) -> None:
    df = foldrunner.run(base_spec(tmp_path, entrypoint="mixed:train", cv={"folds": 4}))
    run_dir = tmp_path / "run"
    assert list(df["status"]) == ["ok"] * 4
    assert list(df["metric_score"]) == [0.5, "n/a", 0.7, "n/a"]  # the user's table: as returned
    csv = read_csv(run_dir)
    assert list(csv["fold_id"]) == list(df["fold_id"])
    assert list(csv["metric_score"]) == ["0.5", "n/a", "0.7", "n/a"]
    parquet = pd.read_parquet(run_dir / "results.parquet")
    assert list(parquet["fold_id"]) == list(df["fold_id"])
    assert list(parquet["metric_score"]) == ["0.5", "n/a", "0.7", "n/a"]
    assert list(parquet["duration_s"]) == list(df["duration_s"])  # only the mixed column is text


def test_a_grid_over_values_of_different_types(tmp_path: Path) -> None:
    spec = base_spec(tmp_path, entrypoint="mixed:constant", search={"grid": {"p": [1, "a"]}})
    df = foldrunner.run(spec)
    run_dir = tmp_path / "run"
    assert list(df["status"]) == ["ok", "ok"]
    assert list(df["param_p"]) == [1, "a"]
    assert list(read_csv(run_dir)["param_p"]) == ["1", "a"]
    parquet = pd.read_parquet(run_dir / "results.parquet")
    assert list(parquet["param_p"]) == ["1", "a"]
    assert list(parquet["metric_acc"]) == [1.0, 1.0]


def test_resume_of_a_run_with_mixed_types(tmp_path: Path) -> None:
    spec = base_spec(tmp_path, entrypoint="mixed:train", cv={"folds": 4},
                     params={"fail_once": 1}, retry={"attempts": 1})
    first = foldrunner.run(spec)
    assert list(first["status"]) == ["ok", "error", "ok", "ok"]
    run_dir = tmp_path / "run"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    proc = subprocess.run(
        [sys.executable, "-m", "foldrunner", "run", str(spec_file), "--run-dir", str(run_dir),
         "--resume"], capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    csv = read_csv(run_dir)
    assert list(csv["status"]) == ["ok"] * 4
    assert list(csv["metric_score"]) == ["0.5", "n/a", "0.7", "n/a"]
    parquet = pd.read_parquet(run_dir / "results.parquet")
    assert list(parquet["status"]) == ["ok"] * 4
    assert list(parquet["metric_score"]) == ["0.5", "n/a", "0.7", "n/a"]


def test_a_parquet_that_cannot_be_written_is_skipped_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.parquet").write_bytes(b"a stale table from an earlier run")

    def refuse(self: pd.DataFrame, path: Any, **kw: Any) -> None:
        raise ValueError("this table cannot be written to parquet")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", refuse)
    caplog.set_level(logging.WARNING, logger="foldrunner")
    # a flush after every fold: the warning must still come once
    monkeypatch.setattr("foldrunner.defaults.Timing.RESULTS_FLUSH_INTERVAL", 0.0)
    df = foldrunner.run(base_spec(tmp_path, entrypoint="mixed:train", cv={"folds": 4}))
    assert list(df["status"]) == ["ok"] * 4
    assert list(read_csv(run_dir)["fold_id"]) == list(df["fold_id"])
    assert not (run_dir / "results.parquet").exists()
    warnings = [r.getMessage() for r in caplog.records if "results.parquet" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "cannot be written to parquet" in warnings[0]
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
