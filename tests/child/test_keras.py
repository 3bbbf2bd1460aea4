"""The Keras example, for real: TensorFlow on the CPU, through the command line."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow", reason="the tf extra is not installed on this platform")

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]


def test_keras_example_cross_validates_digits(tmp_path):
    run_dir = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "foldrunner", "run", str(ROOT / "configs" / "digits_keras.yaml"),
         "--run-dir", str(run_dir), "-o", "cv.folds=3", "-o", "params.epochs=8",
         "-o", "search.grid.lr=[0.003, 0.01]", "-o", "search.grid.units=[64]",
         "-o", "resources.workers=2"],
        capture_output=True, text=True, timeout=540,
    )
    assert r.returncode == 0, r.stderr + r.stdout
    rows = json.loads(subprocess.run(
        [sys.executable, "-m", "foldrunner", "results", str(run_dir), "--format", "json"],
        capture_output=True, text=True, check=True).stdout)
    assert len(rows) == 6 and {row["status"] for row in rows} == {"ok"}
    for row in rows:
        assert row["metric_val_accuracy"] > 0.9, row
    # the ranked summary ends the run's output
    assert "rank" in r.stdout.splitlines()[-3]
    # every fold's epochs reached the journal through ctx.report
    db = sqlite3.connect(run_dir / "journal.sqlite")
    reports = [json.loads(x) for (x,) in db.execute("SELECT report FROM attempts")]
    db.close()
    assert len(reports) == 6
    for rep in reports:
        assert rep["epoch"] == 8 and 0 < rep["val_accuracy"] <= 1 and "loss" in rep
