"""Tests of foldrunner.store.results on a real journal: the table, csv/parquet, the summary, render."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from foldrunner.errors import UsageError
from foldrunner.store.journal import Journal
from foldrunner.wire.outcome import AttemptResult, Status
from foldrunner.store.paths import RunPaths
from foldrunner.config.plan import Plan, build_plan
from foldrunner.store.results import build_table, load_results, render, summarize, write_results
from foldrunner.config.spec import load_spec

pytestmark = pytest.mark.timeout(60)

CORE = ["trial", "replicate", "fold", "fold_id", "seed", "status", "attempts", "duration_s",
        "gpu", "peak_rss_mb", "peak_gpu_mb", "error"]


def make_plan(tmp_path: Path, grid: dict[str, list[Any]], folds: int = 2, replicates: int = 1,
              seed: int = 0) -> Plan:
    spec = load_spec({"name": "t", "entrypoint": "m:f", "workdir": str(tmp_path),
                      "params": {"epochs": 3}, "search": {"grid": grid},
                      "cv": {"folds": folds, "replicates": replicates, "seed": seed}})
    return build_plan(spec)


def open_journal(run_dir: Path, plan: Plan) -> Journal:
    run_dir.mkdir(parents=True, exist_ok=True)
    j = Journal(RunPaths(run_dir).journal)
    j.initialise(run_id="run-1", spec_yaml="name: t\n", plan=plan, name="t")
    return j


def record(j: Journal, fold_id: str, attempt: int, status: Status, *, end: bool = True,
           **kw: Any) -> None:
    """One attempt: started, then (unless ``end`` is false) ended with ``status``."""
    started = 1000.0 + attempt
    j.start_attempt(fold_id, attempt, started_at=started, pid=4242, pid_started_at=started,
                    gpu=kw.get("gpu"), log_path=f"logs/{fold_id}.{attempt}.log")
    if end:
        duration = kw.pop("duration_s", 2.5)
        j.end_attempt(AttemptResult(fold_id, attempt, status, started, started + duration,
                                    duration, log_path=f"logs/{fold_id}.{attempt}.log", **kw))


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, Plan]:
    """A run of 2 trials x 1 replicate x 3 folds with retries, failures and unrun folds.

    t0-r0-f0 ok; t0-r0-f1 crashed then ok (2 attempts); t0-r0-f2 ok with an extra metric;
    t1-r0-f0 ok; t1-r0-f1 timeout then error (final: error); t1-r0-f2 never started.
    """
    plan = make_plan(tmp_path, {"lr": [0.1, 0.01]}, folds=3)
    run_dir = tmp_path / "run"
    with open_journal(run_dir, plan) as j:
        record(j, "t0-r0-f0", 1, Status.OK, gpu=0, metrics={"acc": 0.8, "loss": 0.5},
               peak_rss_mb=512.0, peak_gpu_mb=1024.0, exit_code=0)
        record(j, "t0-r0-f1", 1, Status.CRASHED, gpu=1, error="killed by SIGSEGV", exit_code=-11,
               signal="SIGSEGV")
        record(j, "t0-r0-f1", 2, Status.OK, gpu=0, metrics={"acc": 0.9, "loss": 0.3}, exit_code=0,
               duration_s=4.0)
        record(j, "t0-r0-f2", 1, Status.OK, metrics={"acc": 0.7, "loss": 0.7, "f1": 0.6})
        record(j, "t1-r0-f0", 1, Status.OK, metrics={"acc": 0.95, "loss": 0.1})
        record(j, "t1-r0-f1", 1, Status.TIMEOUT, error="past limits.timeout (1s)")
        record(j, "t1-r0-f1", 2, Status.ERROR, error="ValueError: bad input", traceback="Trace...")
    return run_dir, plan


# ---------------------------------------------------------------- the table
def test_one_row_per_fold_with_an_attempt_in_plan_order(run):
    run_dir, _ = run
    with Journal(RunPaths(run_dir).journal) as j:
        df = build_table(j)
    assert list(df["fold_id"]) == ["t0-r0-f0", "t0-r0-f1", "t0-r0-f2", "t1-r0-f0", "t1-r0-f1"]
    assert list(df["trial"]) == [0, 0, 0, 1, 1]
    assert list(df["replicate"]) == [0] * 5
    assert list(df["fold"]) == [0, 1, 2, 0, 1]
    assert list(df["seed"]) == [0] * 5


def test_columns_core_then_params_then_metrics(run):
    df = load_results(run[0])
    cols = list(df.columns)
    assert cols[:12] == CORE
    assert cols[12:17] == ["param_epochs", "param_lr", "metric_acc", "metric_loss", "metric_f1"]
    assert not any(c.startswith(("param_", "metric_")) for c in cols[17:])


def test_each_row_is_the_final_attempt(run):
    df = load_results(run[0]).set_index("fold_id")
    assert df.loc["t0-r0-f1", "status"] == "ok"
    assert df.loc["t0-r0-f1", "attempts"] == 2
    assert df.loc["t0-r0-f1", "duration_s"] == 4.0
    assert df.loc["t0-r0-f1", "gpu"] == 0
    assert df.loc["t0-r0-f1", "error"] == ""  # the crash of attempt 1 is not the fold's error
    assert df.loc["t0-r0-f1", "metric_acc"] == 0.9
    assert list(df["status"]) == ["ok", "ok", "ok", "ok", "error"]
    assert list(df["attempts"]) == [1, 2, 1, 1, 2]


def test_error_of_a_failed_final_attempt(run):
    df = load_results(run[0]).set_index("fold_id")
    row = df.loc["t1-r0-f1"]
    assert row["status"] == "error"
    assert row["error"] == "ValueError: bad input"
    assert math.isnan(row["metric_acc"]) and math.isnan(row["metric_loss"])
    assert list(df["error"]) == ["", "", "", "", "ValueError: bad input"]


def test_values_params_and_metric_union(run):
    df = load_results(run[0]).set_index("fold_id")
    first = df.loc["t0-r0-f0"]
    assert (first["duration_s"], first["peak_rss_mb"], first["peak_gpu_mb"]) == (2.5, 512.0, 1024.0)
    assert first["gpu"] == 0
    assert list(df["param_epochs"]) == [3] * 5
    assert list(df["param_lr"]) == [0.1, 0.1, 0.1, 0.01, 0.01]
    assert list(df["metric_acc"].iloc[:4]) == [0.8, 0.9, 0.7, 0.95]
    f1 = df["metric_f1"]
    assert f1.loc["t0-r0-f2"] == 0.6
    assert f1.drop("t0-r0-f2").isna().all()  # only one fold returned f1
    assert pd.isna(df.loc["t0-r0-f2", "gpu"])  # no GPU: <NA>, not 0


def test_numeric_columns_keep_numeric_dtypes_without_values(run):
    df = load_results(run[0])
    for col in ("duration_s", "peak_rss_mb", "peak_gpu_mb", "metric_acc", "metric_f1"):
        assert df[col].dtype == "float64", col
    assert str(df["gpu"].dtype) == "Int64" and str(df["attempts"].dtype) == "int64"
    no_peaks = df[df["fold_id"] != "t0-r0-f0"]
    assert no_peaks["peak_rss_mb"].isna().all()


def test_numeric_columns_are_float_when_no_fold_has_a_value(tmp_path):
    plan = make_plan(tmp_path, {"lr": [0.1]}, folds=2)
    with open_journal(tmp_path / "run", plan) as j:
        record(j, "t0-r0-f0", 1, Status.OK, metrics={"acc": 1.0})  # no memory samples
        record(j, "t0-r0-f1", 1, Status.OK, end=False)  # running: no duration yet
        df = build_table(j)
    for col in ("duration_s", "peak_rss_mb", "peak_gpu_mb"):
        assert df[col].dtype == "float64", col
    assert df["peak_rss_mb"].isna().all() and df["peak_gpu_mb"].isna().all()
    assert df["duration_s"].iloc[0] == 2.5 and math.isnan(df["duration_s"].iloc[1])


def test_list_params_become_json_text(tmp_path):
    plan = make_plan(tmp_path, {"units": [[64, 32], [16]]}, folds=2)
    with open_journal(tmp_path / "run", plan) as j:
        record(j, "t0-r0-f0", 1, Status.OK, metrics={"acc": 1.0})
        record(j, "t1-r0-f1", 1, Status.OK, metrics={"acc": 0.5})
        df = build_table(j)
    assert list(df["param_units"]) == ["[64, 32]", "[16]"]
    assert list(df["fold_id"]) == ["t0-r0-f0", "t1-r0-f1"]


def test_a_running_retry_is_the_fold_s_row(tmp_path):
    plan = make_plan(tmp_path, {"lr": [0.1]}, folds=2)
    with open_journal(tmp_path / "run", plan) as j:
        record(j, "t0-r0-f0", 1, Status.MEMORY, error="over max_rss")
        record(j, "t0-r0-f0", 2, Status.OK, end=False, gpu=1)
        df = build_table(j)
    assert len(df) == 1
    row = df.iloc[0]
    assert (row["fold_id"], row["status"], row["attempts"], row["error"]) == (
        "t0-r0-f0", "running", 2, "")
    assert row["gpu"] == 1 and math.isnan(row["duration_s"])


def test_an_empty_journal_has_the_core_columns_and_no_rows(tmp_path):
    plan = make_plan(tmp_path, {"lr": [0.1]}, folds=2)
    with open_journal(tmp_path / "run", plan) as j:
        df = build_table(j)
    assert len(df) == 0
    assert list(df.columns)[:12] == CORE


def test_load_results_equals_build_table(run):
    run_dir, _ = run
    with Journal(RunPaths(run_dir).journal) as j:
        expected = build_table(j)
    pd.testing.assert_frame_equal(load_results(run_dir), expected)
    pd.testing.assert_frame_equal(load_results(str(run_dir)), expected)


def test_load_results_reads_a_live_journal(run):
    run_dir, _ = run
    with Journal(RunPaths(run_dir).journal) as writer:  # the run is still going
        record(writer, "t1-r0-f2", 1, Status.OK, metrics={"acc": 0.5, "loss": 0.9})
        df = load_results(run_dir)
    assert list(df["fold_id"])[-1] == "t1-r0-f2"
    assert len(df) == 6 and df.iloc[-1]["metric_acc"] == 0.5


def test_load_results_without_a_journal_names_the_directory(tmp_path):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    with pytest.raises(UsageError) as info:
        load_results(empty)
    assert str(empty) in str(info.value)
    assert "journal.sqlite" in str(info.value)
    with pytest.raises(UsageError, match="no-such-dir"):
        load_results(tmp_path / "no-such-dir")


def test_load_results_in_a_directory_with_uri_characters(tmp_path):
    """The journal is opened read-only by a file: URI: '#', '?' and '%' must be quoted."""
    plan = make_plan(tmp_path, {"lr": [0.1]}, folds=2)
    run_dir = tmp_path / "sweep #1?x=%20"
    with open_journal(run_dir, plan) as j:
        record(j, "t0-r0-f0", 1, Status.OK, metrics={"acc": 1.0})
    assert list(load_results(run_dir)["fold_id"]) == ["t0-r0-f0"]


# ---------------------------------------------------------------- writing
def files(run_dir: Path) -> list[str]:
    """The run directory's files, the journal's own (``-wal``, ``-shm``) left out."""
    return sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("journal.sqlite"))


def test_write_results_writes_csv_and_parquet_and_leaves_no_temp_files(run):
    run_dir, _ = run
    paths = RunPaths(run_dir)
    df = load_results(run_dir)
    written = write_results(df, paths)
    assert written == [paths.results_csv, paths.results_parquet]
    assert files(run_dir) == ["results.csv", "results.parquet"]
    pd.testing.assert_frame_equal(pd.read_parquet(paths.results_parquet), df)
    csv = pd.read_csv(paths.results_csv, keep_default_na=False)
    assert list(csv.columns) == list(df.columns)
    assert list(csv["fold_id"]) == list(df["fold_id"])
    assert list(csv["error"]) == list(df["error"])
    assert list(csv["metric_acc"]) == ["0.8", "0.9", "0.7", "0.95", ""]  # NaN: an empty cell
    write_results(df.iloc[:2], paths)  # rewritten in place
    assert len(pd.read_parquet(paths.results_parquet)) == 2
    assert files(run_dir) == ["results.csv", "results.parquet"]


def test_written_results_have_the_permissions_of_any_new_file(run):
    run_dir, _ = run
    old = os.umask(0o022)
    try:
        write_results(load_results(run_dir), RunPaths(run_dir))
    finally:
        os.umask(old)
    for name in ("results.csv", "results.parquet"):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o644, name


def test_a_failed_write_keeps_the_old_file_and_no_temp_file(run, monkeypatch):
    run_dir, _ = run
    paths = RunPaths(run_dir)
    df = load_results(run_dir)
    write_results(df, paths)
    before = paths.results_parquet.read_bytes()

    def broken(self: pd.DataFrame, path: Any, **kw: Any) -> None:
        Path(path).write_bytes(b"half a parquet file")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError, match="disk full"):
        write_results(df.iloc[:1], paths)
    assert paths.results_parquet.read_bytes() == before
    assert files(run_dir) == ["results.csv", "results.parquet"]


# ---------------------------------------------------------------- the summary
def test_summary_mean_std_over_ok_folds_only(run):
    s = summarize(load_results(run[0]))
    assert "rank" not in s.columns  # no objective: no ranking
    assert list(s.columns) == ["trial", "param_epochs", "param_lr", "folds_ok", "folds_failed",
                               "acc_mean", "acc_std", "loss_mean", "loss_std", "f1_mean", "f1_std"]
    assert list(s["trial"]) == [0, 1]
    assert list(s["param_lr"]) == [0.1, 0.01]
    assert list(s["folds_ok"]) == [3, 1] and list(s["folds_failed"]) == [0, 1]
    t0, t1 = s.iloc[0], s.iloc[1]
    assert t0["acc_mean"] == pytest.approx(0.8)
    assert t0["acc_std"] == pytest.approx(0.1)  # sample std of 0.8, 0.9, 0.7
    assert t0["loss_mean"] == pytest.approx(0.5) and t0["loss_std"] == pytest.approx(0.2)
    assert t0["f1_mean"] == pytest.approx(0.6) and math.isnan(t0["f1_std"])
    assert t1["acc_mean"] == pytest.approx(0.95)  # the failed fold is left out
    assert math.isnan(t1["acc_std"]) and math.isnan(t1["f1_mean"])


def test_summary_counts_every_failure_status(tmp_path):
    plan = make_plan(tmp_path, {"lr": [0.1]}, folds=5)
    with open_journal(tmp_path / "run", plan) as j:
        for k, status in enumerate([Status.OK, Status.TIMEOUT, Status.CRASHED, Status.MEMORY,
                                    Status.CANCELLED]):
            record(j, f"t0-r0-f{k}", 1, status, metrics={"acc": 0.5} if k == 0 else {})
        s = summarize(build_table(j))
    assert (s.iloc[0]["folds_ok"], s.iloc[0]["folds_failed"]) == (1, 4)


def ranked_run(tmp_path: Path) -> pd.DataFrame:
    """Four trials, two folds each: acc means 0.5, 0.9, (none: both failed), 0.7."""
    tmp_path.mkdir(exist_ok=True)
    plan = make_plan(tmp_path, {"lr": [1, 2, 3, 4]}, folds=2)
    accs = {0: (0.4, 0.6), 1: (0.8, 1.0), 3: (0.6, 0.8)}
    with open_journal(tmp_path / "run", plan) as j:
        for t in range(4):
            for k in range(2):
                if t in accs:
                    record(j, f"t{t}-r0-f{k}", 1, Status.OK,
                           metrics={"acc": accs[t][k], "loss": 1 - accs[t][k]})
                else:
                    record(j, f"t{t}-r0-f{k}", 1, Status.ERROR, error="RuntimeError: no")
        return build_table(j)


def test_summary_ranks_by_objective_max(tmp_path):
    s = summarize(ranked_run(tmp_path), "acc", "max")
    assert list(s.columns[:2]) == ["rank", "trial"]
    assert list(s["rank"]) == [1, 2, 3, 4]
    assert list(s["trial"]) == [1, 3, 0, 2]  # trial 2 lacks the metric: last
    assert list(s["acc_mean"].iloc[:3]) == pytest.approx([0.9, 0.7, 0.5])
    assert math.isnan(s["acc_mean"].iloc[3])
    assert list(s["folds_failed"]) == [0, 0, 0, 2]


def test_summary_ranks_by_objective_min(tmp_path):
    s = summarize(ranked_run(tmp_path), "loss", "min")
    assert list(s["rank"]) == [1, 2, 3, 4]
    assert list(s["trial"]) == [1, 3, 0, 2]  # least loss first, the failed trial still last
    assert list(s["loss_mean"].iloc[:3]) == pytest.approx([0.1, 0.3, 0.5])
    s = summarize(ranked_run(tmp_path / "again"), "acc", "min")
    assert list(s["trial"]) == [0, 3, 1, 2]


def test_summary_without_the_objective_metric_is_not_ranked(tmp_path):
    df = ranked_run(tmp_path)
    for metric in (None, "", "no_such_metric"):
        s = summarize(df, metric, "max")
        assert "rank" not in s.columns
        assert list(s["trial"]) == [0, 1, 2, 3]


# ---------------------------------------------------------------- render
@pytest.fixture
def small() -> pd.DataFrame:
    return pd.DataFrame({"trial": [0, 1], "fold_id": ["t0-r0-f0", "t1-r0-f0"],
                         "metric_acc": [0.123456, float("nan")]})


def test_render_csv(small):
    assert render(small, "csv") == "trial,fold_id,metric_acc\n0,t0-r0-f0,0.123456\n1,t1-r0-f0,\n"


def test_render_json(small):
    assert json.loads(render(small, "json")) == [
        {"trial": 0, "fold_id": "t0-r0-f0", "metric_acc": 0.123456},
        {"trial": 1, "fold_id": "t1-r0-f0", "metric_acc": None},
    ]


def test_render_markdown(small):
    lines = render(small, "markdown").splitlines()
    assert len(lines) == 4
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["trial", "fold_id", "metric_acc"]
    assert set(lines[1].replace("|", "").replace(":", "")) == {"-"}
    assert [c.strip() for c in lines[2].strip("|").split("|")] == ["0", "t0-r0-f0", "0.1235"]
    assert [c.strip() for c in lines[3].strip("|").split("|")] == ["1", "t1-r0-f0", "nan"]


def test_render_table(small):
    lines = render(small, "table").splitlines()
    assert lines[0].split() == ["trial", "fold_id", "metric_acc"]
    assert lines[1].split() == ["0", "t0-r0-f0", "0.1235"]
    assert lines[2].split() == ["1", "t1-r0-f0", "NaN"]


def test_render_a_summary(run):
    out = render(summarize(load_results(run[0]), "acc", "max"), "csv").splitlines()
    assert out[0].startswith("rank,trial,param_epochs,param_lr,folds_ok,folds_failed,acc_mean")
    assert out[1].startswith("1,1,3,0.01,1,1,0.95")
    assert len(out) == 3


@pytest.mark.parametrize("fmt", ["xml", "", "CSV", "tsv"])
def test_render_unknown_format_is_a_usage_error(small, fmt):
    with pytest.raises(UsageError) as info:
        render(small, fmt)
    assert str(info.value) == f"unknown format {fmt!r}: use one of table, csv, json, markdown"


def test_each_row_names_the_host_of_its_final_attempt(tmp_path):
    """Contract §5: a ``host`` column. A journal written before it existed gets it, empty,
    when it is read or resumed."""
    import socket
    import sqlite3

    import foldrunner
    from conftest import base_spec

    spec = base_spec(tmp_path, params={"case": "return"}, cv={"folds": 2})
    df = foldrunner.run(spec)
    assert list(df["host"]) == [socket.gethostname()] * 2
    assert list(df["node"]) == ["", ""]  # a Ray node id with backend: ray
    run_dir = tmp_path / "run"
    db = sqlite3.connect(run_dir / "journal.sqlite")
    db.execute("ALTER TABLE attempts DROP COLUMN host")  # as an older foldrunner wrote it
    db.execute("ALTER TABLE attempts DROP COLUMN node")
    db.commit()
    db.close()
    assert list(foldrunner.load_results(run_dir)["host"]) == ["", ""]
    df = foldrunner.run(spec, resume=True)  # nothing to run; the journal gets the column
    assert list(df["host"]) == ["", ""]
    assert "host" in [r[1] for r in sqlite3.connect(run_dir / "journal.sqlite").execute(
        "PRAGMA table_info(attempts)")]


def test_the_csv_written_in_chunks_is_the_whole_table_s(run, monkeypatch):
    """``to_csv`` goes a few rows at a time (its Python objects do not grow with the
    table, nor the orchestrator's RSS with them); the file is the one written at once."""
    import foldrunner.store.results as results

    df = load_results(run[0])
    monkeypatch.setattr(results, "CSV_CHUNK_ROWS", 2)
    paths = RunPaths(run[0])
    write_results(df, paths)
    assert len(df) > 2 and paths.results_csv.read_text() == df.to_csv(index=False)
