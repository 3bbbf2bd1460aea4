"""Engine behaviour beyond the crash matrix: stalls, lingering, memory, callables."""

from __future__ import annotations

import time

import pytest

import foldrunner
from conftest import base_spec

pytestmark = pytest.mark.timeout(60)


def test_stall_ends_fold_as_timeout(tmp_path):
    spec = base_spec(tmp_path, entrypoint="behave:stall", limits={"stall": "1s"},
                     retry={"attempts": 1})
    t0 = time.monotonic()
    df = foldrunner.run(spec)
    row = df.iloc[0]
    assert row["status"] == "timeout"
    assert "stalled: no report for 1s" in row["error"]
    assert time.monotonic() - t0 < 8


def test_lingering_worker_keeps_its_result_and_is_killed(tmp_path):
    spec = base_spec(tmp_path, entrypoint="behave:linger", limits={"exit_timeout": "1s"})
    t0 = time.monotonic()
    df = foldrunner.run(spec)
    row = df.iloc[0]
    assert row["status"] == "ok" and row["metric_acc"] == 0.9 and row["attempts"] == 1
    assert bool(row["lingered"]) is True
    assert time.monotonic() - t0 < 10


def test_memory_hog_over_max_rss_is_ended_as_memory(tmp_path):
    spec = base_spec(tmp_path, entrypoint="behave:hog", limits={"max_rss": "150MiB"},
                     retry={"attempts": 1})
    df = foldrunner.run(spec)
    row = df.iloc[0]
    ended = time.time()
    assert row["status"] == "memory", row["error"]
    assert "over max_rss 150 MiB" in row["error"]
    crossed = float((tmp_path / "run" / "crossed").read_text())
    assert row["ended_at"] - crossed < 2.0  # ended within two seconds of crossing
    assert row["peak_rss_mb"] >= 150
    assert ended - crossed < 10


def test_entrypoint_callable_is_sent_with_dill(tmp_path):
    factor = 3.0

    def fold(ctx):  # a closure: dill sends it by value
        return {"acc": factor * ctx.params["w"], "fold": ctx.fold}

    spec = base_spec(tmp_path, entrypoint="not_a_module:ignored", params={"w": 0.1},
                     cv={"folds": 2})
    df = foldrunner.run(spec, entrypoint=fold)
    assert list(df["status"]) == ["ok", "ok"]
    assert list(df["metric_acc"]) == pytest.approx([0.3, 0.3])
    assert list(df["metric_fold"]) == [0, 1]


def test_keyword_overrides_and_results_files(tmp_path):
    spec = base_spec(tmp_path, entrypoint="behave:slow", params={"seconds": 0.01})
    df = foldrunner.run(spec, cv__folds=3, params__seconds=0.0)
    assert list(df["fold_id"]) == ["t0-r0-f0", "t0-r0-f1", "t0-r0-f2"]
    run_dir = tmp_path / "run"
    on_disk = foldrunner.load_results(run_dir)
    assert list(on_disk["fold_id"]) == list(df["fold_id"])
    import pandas as pd

    csv = pd.read_csv(run_dir / "results.csv")
    assert list(csv["status"]) == ["ok"] * 3
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []


def test_sigkill_is_memory_when_the_kernels_oom_count_rose(tmp_path, monkeypatch):
    """The kernel's OOM accounting is read from /proc/vmstat and the cgroup's memory.events;
    here it is made to rise while the fold runs (we cannot OOM the test machine safely)."""
    from foldrunner.procs import memory

    counts = iter(range(0, 1000, 5))
    monkeypatch.setattr(memory.OomCounter, "read", lambda self: next(counts))
    spec = base_spec(tmp_path, params={"case": "segv"}, retry={"attempts": 1})
    df = foldrunner.run(spec)  # SIGSEGV: not an OOM kill, whatever the counter says
    assert df.iloc[0]["status"] == "crashed"

    spec = base_spec(tmp_path, entrypoint="behave:suicide_by_sigkill", retry={"attempts": 1},
                     output={"dir": str(tmp_path / "run2")})
    df = foldrunner.run(spec)
    row = df.iloc[0]
    assert row["status"] == "memory"
    assert "OOM killer" in row["error"]
