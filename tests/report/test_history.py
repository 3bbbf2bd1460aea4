"""The report history: every ctx.report call journaled in batches, thinned past a thousand
calls, read back by foldrunner.load_reports (contract §5); old journals migrate."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

import foldrunner
from conftest import base_spec
from foldrunner.config.plan import build_plan
from foldrunner.config.spec import load_spec
from foldrunner.engine.events import AttemptStart
from foldrunner.errors import UsageError
from foldrunner.gpu.inventory import Slot
from foldrunner.store import recorder
from foldrunner.store.journal import Journal
from foldrunner.store.paths import RunPaths
from foldrunner.store.recorder import HISTORY_FULL, HISTORY_MAX, JournalRecorder, keep_call
from foldrunner.store.reports import REPORT_COLUMNS, load_reports
from foldrunner.wire.outcome import AttemptResult, Status

pytestmark = pytest.mark.timeout(60)
HERE = Path(__file__).parent


def kept(calls: int) -> list[int]:
    out: list[int] = []
    for seq in range(calls):
        if keep_call(seq, len(out)):
            out.append(seq)
    return out


def test_the_thinning_policy_keeps_the_first_thousand_then_halves_each_doubling():
    seqs = kept(8 * HISTORY_FULL)
    assert seqs[:HISTORY_FULL] == list(range(HISTORY_FULL))
    assert seqs[HISTORY_FULL:HISTORY_FULL + 3] == [1000, 1002, 1004]  # every 2nd up to 2,000
    assert [s for s in seqs if 2000 <= s < 2012] == [2000, 2004, 2008]  # every 4th up to 4,000
    assert [s for s in seqs if 4000 <= s < 4024] == [4000, 4008, 4016]  # every 8th up to 8,000
    assert len(seqs) == HISTORY_FULL + 3 * HISTORY_FULL // 2  # 500 rows per doubling
    # a million calls: 1,000 + 500 per doubling (10 doublings)
    n = sum(1 for s in range(1_000_000) if s < HISTORY_FULL or keep_call(s, 0))
    assert 5900 <= n <= 6100, n
    assert not keep_call(0, HISTORY_MAX)  # never more than HISTORY_MAX rows


def make_journal(tmp_path: Path, folds: int = 2) -> tuple[Journal, list]:
    spec = load_spec({"name": "t", "entrypoint": "m:f", "workdir": str(tmp_path),
                      "params": {"epochs": 3}, "cv": {"folds": folds}})
    plan = build_plan(spec)
    paths = RunPaths(tmp_path / "run")
    paths.make()
    j = Journal(paths.journal)
    j.initialise(run_id="r", spec_yaml="name: t\n", plan=plan, name="t")
    return j, list(plan.folds)


def start(rec: JournalRecorder, fold, attempt: int, at: float) -> None:
    rec.attempt_started(AttemptStart(fold=fold, attempt=attempt, slot=Slot(0), pid=1,
                                     pid_started_at=None, started_at=at, log_path="x.log", host="h"))


def end(rec: JournalRecorder, fold, attempt: int, at: float) -> None:
    rec.attempt_ended(fold, AttemptResult(fold_id=fold.fold_id, attempt=attempt, status=Status.OK,
                                          started_at=at, ended_at=at + 1, duration_s=1.0), True)


def test_the_recorder_writes_every_call_in_few_transactions(tmp_path):
    j, folds = make_journal(tmp_path)
    commits: list[str] = []
    j.db.set_trace_callback(lambda sql: commits.append(sql) if sql.strip().upper() == "COMMIT" else None)
    rec = JournalRecorder(j, on_error=pytest.fail)
    t0 = time.time()
    for f in folds:
        start(rec, f, 1, t0)
    commits.clear()
    calls = 1501  # the last call below, seq 1501, is odd: thinned away
    for i in range(calls):  # well within a second: one batch at the first call, then held
        for f in folds:
            rec.report(f, 1, {"epoch": i, "loss": 1 / (i + 1)}, t0 + i * 0.001)
    assert len(commits) <= 2, commits  # the first call's flush, maybe one a second later
    mid = load_reports(tmp_path / "run")
    assert len(mid) < 2 * calls  # the rest waits for the next tick or the attempt's end
    rec.tick(time.monotonic() + recorder.REPORT_INTERVAL)
    for f in folds:
        rec.report(f, 1, {"epoch": calls, "loss": 0.0, "last": 1}, t0 + 5)  # not kept: thinned
        end(rec, f, 1, t0)
    df = load_reports(tmp_path / "run")
    assert list(df.columns) == REPORT_COLUMNS + ["metric_epoch", "metric_loss", "metric_last"]
    per_attempt = kept(calls + 1)
    assert calls not in per_attempt  # the last call is thinned away ...
    for f in folds:
        seqs = df[df["fold_id"] == f.fold_id]["seq"].tolist()
        assert seqs == per_attempt + [calls]  # ... and written all the same
    last = df[df["seq"] == calls]
    assert last["metric_last"].tolist() == [1, 1] and last["time_s"].tolist() == [5.0, 5.0]
    first = df[df["seq"] == 0].iloc[0]
    assert first["time_s"] == 0.0 and first["metric_loss"] == 1.0
    # the latest report, what `status` shows, is written with them
    latest = j.db.execute("SELECT report FROM attempts WHERE fold_id = ?", (folds[0].fold_id,)).fetchone()
    assert '"last": 1' in latest[0]
    j.close()


def test_load_reports_of_a_real_run_with_a_retry(tmp_path):
    spec = base_spec(tmp_path, entrypoint="report_folds:reporter", workdir=str(HERE),
                     params={"calls": 4}, cv={"folds": 2, "replicates": 2},
                     retry={"attempts": 2, "on": ["error"], "backoff": 0})
    df = foldrunner.run(spec)
    assert (df["status"] == "ok").all()
    rep = foldrunner.load_reports(tmp_path / "run")
    assert list(rep.columns) == REPORT_COLUMNS + ["metric_epoch", "metric_loss", "metric_note"]
    # 4 folds, 4 calls each, and the failed first attempts of the two fold-1 folds
    assert len(rep) == 4 * 4 + 2 * 4
    for (fold_id, attempt), g in rep.groupby(["fold_id", "attempt"]):
        assert g["seq"].tolist() == [0, 1, 2, 3]
        assert g["metric_epoch"].tolist() == [1, 2, 3, 4]
        assert g["time_s"].is_monotonic_increasing and (g["time_s"] >= 0).all()
        assert (g["time_s"] < 60).all()
        row = g.iloc[0]
        assert fold_id == f"t{row['trial']}-r{row['replicate']}-f{row['fold']}"
    assert sorted(rep[rep["attempt"] == 2]["fold"].unique()) == [1]
    assert set(rep["metric_note"]) == {"text"}


def test_an_old_journal_reads_as_no_reports_and_migrates_on_resume(tmp_path):
    j, folds = make_journal(tmp_path)
    j.db.execute("DROP TABLE reports")  # a journal written before the history existed
    j.db.commit()
    j.close()
    empty = load_reports(tmp_path / "run")
    assert list(empty.columns) == REPORT_COLUMNS and empty.empty
    assert str(empty["attempt"].dtype) == "Int64"
    with Journal(RunPaths(tmp_path / "run").journal) as j:  # opened to write: as on --resume
        tables = {r[0] for r in j.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "reports" in tables
        j.save_reports([(folds[0].fold_id, 1, 0, 0.5, {"a": 1.5})], {})
    assert load_reports(tmp_path / "run")["metric_a"].tolist() == [1.5]


def test_odd_metric_names_and_values_come_back(tmp_path):
    j, folds = make_journal(tmp_path, folds=1)
    names = {'a"b': 1, "c'd": 2.5, "é x": "t", "$.e[0]": None, "f\\g": True}
    j.save_reports([(folds[0].fold_id, 1, 0, 0.0, names)], {})
    j.close()
    df = load_reports(tmp_path / "run")
    got = {c.removeprefix("metric_"): df[c].iloc[0] for c in df.columns if c.startswith("metric_")}
    assert got['a"b'] == 1 and got["c'd"] == 2.5 and got["é x"] == "t" and got["f\\g"] == 1
    assert pd.isna(got["$.e[0]"])


def test_load_reports_of_a_dir_that_is_not_a_run(tmp_path):
    with pytest.raises(UsageError, match="not a foldrunner run directory"):
        load_reports(tmp_path)


def test_the_journal_keeps_its_speed_with_reports(tmp_path):
    """Reports of 20 attempts at once, 50 calls each, a second's worth: one transaction."""
    j, folds = make_journal(tmp_path, folds=20)
    rows = [(f.fold_id, 1, s, s * 0.02, {"loss": 0.5, "epoch": s}) for f in folds for s in range(50)]
    t = time.perf_counter()
    j.save_reports(rows, {(f.fold_id, 1): ({"loss": 0.5}, 1.0) for f in folds})
    took = time.perf_counter() - t
    assert took < 0.5, took  # 1,000 rows: milliseconds, one commit
    assert j.db.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 1000
    j.close()
