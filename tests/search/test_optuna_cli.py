"""Adaptive search through the command line: real runs, real journal, real study."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from conftest import FOLDS

pytestmark = pytest.mark.timeout(180)


def cli(*args: str, cwd: Path | None = None, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "foldrunner", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


def spec_text(name: str, *, entry: str = "synthetic", trials: int = 16, folds: int = 4,
              workers: int = 2, sampler: str = "tpe", seed: int = 3,
              pruner: str = "{median: {warmup_folds: 0, min_trials: 3}}", extra: str = "") -> str:
    return f"""\
name: {name}
entrypoint: search_folds:{entry}
workdir: {FOLDS}
search:
  optuna:
    trials: {trials}
    sampler: {sampler}
    seed: {seed}
    space:
      x: {{uniform: [0.0, 1.0]}}
    pruner: {pruner}
{extra}cv: {{folds: {folds}}}
objective: {{metric: score, mode: max}}
resources: {{gpus: none, workers: {workers}}}
limits: {{timeout: 30s, grace: 1s}}
retry: {{attempts: 1, backoff: 0}}
"""


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def load_study(run_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir / 'optuna.sqlite'}")


def results(run_dir: Path) -> list[dict]:
    out = cli("results", str(run_dir), "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def journal_rows(run_dir: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(f"file:{run_dir / 'journal.sqlite'}?mode=ro", uri=True)
    try:
        return list(db.execute(sql))
    finally:
        db.close()


def test_tpe_with_the_median_pruner_prunes_the_bad_region_and_agrees_with_the_study(tmp_path):
    spec = write(tmp_path, spec_text("tpe-median"))
    plan = cli("plan", str(spec))
    assert plan.returncode == 0, plan.stderr
    assert "adaptive search" in plan.stdout and "at most 16 trial(s)" in plan.stdout
    assert "= 64 folds" in plan.stdout
    run_dir = tmp_path / "run"
    done = cli("run", str(spec), "--run-dir", str(run_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = results(run_dir)
    assert len({r["trial"] for r in rows}) == 16 and len(rows) == 16 * 4
    assert {r["status"] for r in rows} == {"ok", "pruned"}  # pruning happened; nothing else
    launched = [r for r in rows if r["attempts"] > 0]
    assert len(launched) < 16 * 4
    never = [r for r in rows if r["status"] == "pruned" and r["attempts"] == 0]
    assert never, "a pruned trial's unstarted folds are never launched"

    study = load_study(run_dir, "tpe-median")
    assert len(study.trials) == 16
    by_trial: dict[int, set[str]] = {}
    for r in rows:
        by_trial.setdefault(r["trial"], set()).add(r["status"])
    for t in study.trials:
        expected = "PRUNED" if "pruned" in by_trial[t.number] else "COMPLETE"
        assert t.state.name == expected, (t.number, by_trial[t.number])
        assert t.user_attrs["fold_ids"] == [f"t{t.number}-r0-f{k}" for k in range(4)]
        ok = {r["fold_id"]: r["metric_score"] for r in rows if r["trial"] == t.number and r["status"] == "ok"}
        assert t.user_attrs["fold_scores"] == pytest.approx(ok)
        assert t.params["x"] == pytest.approx(next(r["param_x"] for r in rows if r["trial"] == t.number))
        if expected == "COMPLETE":
            assert t.value == pytest.approx(sum(ok.values()) / 4)

    summary = cli("results", str(run_dir), "--summary", "--format", "json")
    assert summary.returncode == 0, summary.stderr
    table = json.loads(summary.stdout)
    top = table[0]
    assert top["rank"] == 1 and top["state"] == "complete"
    assert top["trial"] == study.best_trial.number
    assert top["score_mean"] == pytest.approx(study.best_value)
    pruned = [r for r in table if r["state"] == "pruned"]
    assert pruned and all(r["rank"] is None and 1 <= r["folds_ok"] < 4 for r in pruned)
    assert all(r["folds_ok"] + r["folds_pruned"] == 4 for r in pruned)

    status = cli("status", str(run_dir))
    assert status.returncode == 0
    n_pruned = sum(1 for t in study.trials if t.state.name == "PRUNED")
    assert f"trials: 16 of 16 asked: {16 - n_pruned} complete, {n_pruned} pruned, 0 in flight" in status.stdout


def test_scores_that_depend_on_the_fold_only_never_prune_whatever_order_folds_end_in(tmp_path):
    # one trial in flight at a time: its three folds run side by side on the three workers
    # (with a new trial to ask, a fold would wait for the one before it: see holds())
    text = spec_text("fold-only", entry="fold_only", trials=8, folds=3, workers=3,
                     sampler="random", pruner="{median: {warmup_folds: 0, min_trials: 1}}")
    spec = write(tmp_path, text.replace("    space:", "    concurrent_trials: 1\n    space:"))
    run_dir = tmp_path / "run"
    done = cli("run", str(spec), "--run-dir", str(run_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = results(run_dir)
    assert len(rows) == 24 and {r["status"] for r in rows} == {"ok"}
    ended = {(r["trial"], r["fold"]): r["ended_at"] for r in rows}
    # the folds did end out of order: a later fold before an earlier one of the same trial
    assert any(ended[(t, 2)] < ended[(t, 0)] for t in range(8))
    assert all(t.state.name == "COMPLETE" for t in load_study(run_dir, "fold-only").trials)


def test_the_same_seed_with_one_worker_asks_the_same_parameters(tmp_path):
    params = []
    for i in range(2):
        spec = write(tmp_path, spec_text("seeded", trials=6, folds=2, workers=1), f"s{i}.yaml")
        done = cli("run", str(spec), "--run-dir", str(tmp_path / f"run{i}"))
        assert done.returncode == 0, done.stdout + done.stderr
        rows = results(tmp_path / f"run{i}")
        params.append(sorted({(r["trial"], r["param_x"]) for r in rows}))
    assert len(params[0]) == 6
    assert params[0] == params[1]


def test_kill_9_mid_study_then_resume_loses_and_duplicates_nothing(tmp_path):
    text = spec_text("killed", entry="slow_synthetic", trials=8, folds=3, workers=2)
    spec = write(tmp_path, text.replace("name: killed\n", "name: killed\nparams: {sleep: 0.4}\n"))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir",
                             str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (run_dir / "journal.sqlite").exists():
                try:
                    n = journal_rows(run_dir, "SELECT COUNT(*) FROM attempts WHERE status = 'ok'")[0][0]
                except sqlite3.OperationalError:
                    n = 0
                if n >= 7:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the run did not get going")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    ok_before = set(journal_rows(run_dir, "SELECT fold_id, attempt FROM attempts WHERE status = 'ok'"))
    in_flight = journal_rows(run_dir, "SELECT COUNT(*) FROM search_trials WHERE state IN ('running', 'pruning')")
    assert in_flight[0][0] >= 1, "killed while trials were in flight"

    done = cli("run", str(spec), "--run-dir", str(run_dir), "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = results(run_dir)
    assert len({r["trial"] for r in rows}) == 8 and len(rows) == 8 * 3
    assert {r["status"] for r in rows} <= {"ok", "pruned"}
    ok_after = journal_rows(run_dir, "SELECT fold_id, attempt FROM attempts WHERE status = 'ok'")
    assert ok_before <= set(ok_after)
    assert len(ok_after) == len({fid for fid, _ in ok_after}), "an ok fold ran again"
    for r in rows:  # an ok fold from before keeps its attempt number: it did not run again
        if r["status"] == "ok" and any(fid == r["fold_id"] for fid, _ in ok_before):
            assert (r["fold_id"], r["attempts"]) in ok_before
    study = load_study(run_dir, "killed")
    assert len(study.trials) == 8
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    params = {r["trial"]: r["param_x"] for r in rows}
    assert all(t.params["x"] == pytest.approx(params[t.number]) for t in study.trials)


BASE = spec_text("bad", trials=4, folds=2)


def pruner(written: str) -> str:
    """BASE with ``pruner: written``."""
    return BASE.replace("pruner: {median: {warmup_folds: 0, min_trials: 3}}", f"pruner: {written}")


BAD = {
    "unknown sampler": (BASE.replace("sampler: tpe", "sampler: grid"), "search.optuna.sampler"),
    "zero trials": (BASE.replace("trials: 4", "trials: 0"), "search.optuna.trials"),
    "missing trials": (BASE.replace("    trials: 4\n", ""), "search.optuna.trials"),
    "unknown pruner": (pruner("medain"), "search.optuna.pruner"),
    "bad warmup": (BASE.replace("warmup_folds: 0", "warmup_folds: -1"),
                   "search.optuna.pruner.median.warmup_folds"),
    "unknown pruner key": (BASE.replace("warmup_folds: 0", "warmup: 0"),
                           "search.optuna.pruner.median.warmup"),
    "bad p_threshold": (pruner("{wilcoxon: {p_threshold: 2}}"), "search.optuna.pruner.wilcoxon.p_threshold"),
    "quoted p_threshold": (pruner("{wilcoxon: {p_threshold: '0.1'}}"),
                           "search.optuna.pruner.wilcoxon.p_threshold"),
    "bad percentile": (pruner("{percentile: {percentile: 100}}"), "search.optuna.pruner.percentile.percentile"),
    "boolean percentile": (pruner("{percentile: {percentile: true}}"),
                           "search.optuna.pruner.percentile.percentile"),
    "two pruners": (pruner("{median: null, percentile: null}"), "search.optuna.pruner"),
    "bad space": (BASE.replace("{uniform: [0.0, 1.0]}", "{uniform: [1.0, 0.0]}"), "search.optuna.space.x"),
    "bad concurrent_trials": (BASE.replace("    space:", "    concurrent_trials: 0\n    space:"),
                              "search.optuna.concurrent_trials"),
    "unknown key": (BASE.replace("    seed: 3", "    sed: 3"), "search.optuna.sed"),
    "no objective": (BASE.replace("objective: {metric: score, mode: max}\n", ""), "objective"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_optuna_specs_are_refused_naming_the_key(tmp_path, case):
    from foldrunner.config.spec import load_spec
    from foldrunner.errors import SpecError

    text, key = BAD[case]
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, text))
    assert f"- {key}" in str(err.value) and err.value.exit_code == 2


@pytest.mark.parametrize("case", ["unknown pruner", "no objective"])
def test_bad_optuna_specs_exit_2_through_the_cli_and_launch_nothing(tmp_path, case):
    text, key = BAD[case]
    spec = write(tmp_path, text)
    for command in (["plan", str(spec)], ["run", str(spec), "--run-dir", str(tmp_path / "run")]):
        out = cli(*command)
        assert out.returncode == 2, out.stdout + out.stderr
        assert f"- {key}" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()  # nothing launched, nothing written


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_resume_asks_new_points_not_the_first_runs_again(tmp_path, sampler):
    # the sampler's generator starts afresh in each process: seeded as the first run's, a
    # resume would ask the first run's points again
    spec = write(tmp_path, spec_text("more", trials=4, folds=2, workers=1, sampler=sampler,
                                     pruner="none"))
    run_dir = tmp_path / "run"
    assert cli("run", str(spec), "--run-dir", str(run_dir)).returncode == 0
    out = cli("run", str(spec), "--run-dir", str(run_dir), "--resume", "-o", "search.optuna.trials=8")
    assert out.returncode == 0, out.stdout + out.stderr
    xs = [t.params["x"] for t in load_study(run_dir, "more").trials]
    assert len(xs) == 8 and len(set(xs)) == 8, xs


def test_an_objective_no_fold_returns_is_said_once(tmp_path):
    text = spec_text("typo", trials=3, folds=2, pruner="none").replace(
        "objective: {metric: score", "objective: {metric: scor")
    run_dir = tmp_path / "run"
    out = cli("run", str(write(tmp_path, text)), "--run-dir", str(run_dir))
    assert out.returncode == 0, out.stderr  # every fold is ok; the study's trials FAIL
    said = out.stdout + out.stderr
    assert said.count("objective.metric 'scor' is not in") == 1, said
    assert "(it returned: score)" in said
    assert {t.state for t in load_study(run_dir, "typo").trials} == {optuna.trial.TrialState.FAIL}


def test_a_retried_fold_runs_before_its_later_folds_so_pruning_still_saves(tmp_path):
    # each trial's fold 1 fails once: its retry waits before folds 2 and 3 of its trial, so
    # a bad trial is judged on folds 0-1 (warmup_folds 1: not on fold 0 alone) and pruned
    # before its later folds start
    text = spec_text("flaky", entry="flaky_synthetic", trials=10, folds=4, workers=1,
                     pruner="{median: {warmup_folds: 1, min_trials: 3}}").replace(
        "retry: {attempts: 1, backoff: 0}", "retry: {attempts: 2, on: [error], backoff: 0}")
    run_dir = tmp_path / "run"
    out = cli("run", str(write(tmp_path, text)), "--run-dir", str(run_dir))
    assert out.returncode == 0, out.stdout + out.stderr
    rows = results(run_dir)
    assert {r["status"] for r in rows} == {"ok", "pruned"}
    never = [r for r in rows if r["status"] == "pruned" and r["attempts"] == 0]
    assert never, "no fold was saved by pruning"
    assert all(r["attempts"] == 2 for r in rows if r["fold"] == 1 and r["status"] == "ok")
