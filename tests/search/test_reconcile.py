"""A resume brings the study in line with the journal, whatever moment a crash hit.

The two states a crash can leave (see foldrunner/search/study.py): the study asked a trial
the journal never took, and the journal ended a trial the study was never told of. Each is
made here in the real files, as the crash would leave them, then resumed through the CLI.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest

from test_optuna_cli import cli, journal_rows, load_study, results, spec_text, write


def test_a_trial_asked_but_never_journaled_is_adopted_not_duplicated(tmp_path):
    spec = write(tmp_path, spec_text("adopt", trials=3, folds=2, pruner="none"))
    run_dir = tmp_path / "run"
    assert cli("run", str(spec), "--run-dir", str(run_dir)).returncode == 0
    study = load_study(run_dir, "adopt")
    study.ask()  # the crash came right after the ask: no parameter, no journal row yet
    done = cli("run", str(spec), "--run-dir", str(run_dir), "--resume", "-o", "search.optuna.trials=4")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = results(run_dir)
    assert sorted({r["trial"] for r in rows}) == [0, 1, 2, 3] and len(rows) == 8
    study = load_study(run_dir, "adopt")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4  # adopted, none asked anew
    assert study.trials[3].params["x"] == pytest.approx(next(r["param_x"] for r in rows if r["trial"] == 3))


def untell(run_dir: Path, number: int) -> None:
    """The study as a crash before it was told of trial ``number``'s end leaves it."""
    db = sqlite3.connect(run_dir / "optuna.sqlite")
    with db:
        (trial_id,) = db.execute("SELECT trial_id FROM trials WHERE number = ?", (number,)).fetchone()
        db.execute("UPDATE trials SET state = 'RUNNING', datetime_complete = NULL WHERE trial_id = ?",
                   (trial_id,))
        db.execute("DELETE FROM trial_values WHERE trial_id = ?", (trial_id,))
    db.close()


def test_a_trial_journaled_as_ended_but_never_told_is_told_without_running_again(tmp_path):
    spec = write(tmp_path, spec_text("tell", trials=3, folds=2, pruner="none"))
    run_dir = tmp_path / "run"
    assert cli("run", str(spec), "--run-dir", str(run_dir)).returncode == 0
    value = load_study(run_dir, "tell").trials[2].value
    untell(run_dir, 2)  # the crash came before the study was told
    assert load_study(run_dir, "tell").trials[2].state is optuna.trial.TrialState.RUNNING
    attempts = journal_rows(run_dir, "SELECT fold_id, attempt, status FROM attempts")
    done = cli("run", str(spec), "--run-dir", str(run_dir), "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert journal_rows(run_dir, "SELECT fold_id, attempt, status FROM attempts") == attempts
    study = load_study(run_dir, "tell")
    assert len(study.trials) == 3
    assert study.trials[2].state is optuna.trial.TrialState.COMPLETE
    assert study.trials[2].value == value


def test_a_trial_pruned_while_its_folds_were_ending_is_closed_as_pruned(tmp_path):
    spec = write(tmp_path, spec_text("ending", trials=3, folds=2, pruner="none"))
    run_dir = tmp_path / "run"
    assert cli("run", str(spec), "--run-dir", str(run_dir)).returncode == 0
    # the crash came after the journal marked trial 2 pruned and while its fold 1 was being
    # ended (close_interrupted of the resume makes such an attempt cancelled), before the study
    # was told
    db = sqlite3.connect(run_dir / "journal.sqlite")
    with db:
        db.execute("UPDATE search_trials SET state = 'pruning', note = 'pruned by a test' WHERE trial = 2")
        db.execute("UPDATE attempts SET status = 'running' WHERE fold_id = 't2-r0-f1'")
    db.close()
    untell(run_dir, 2)
    done = cli("run", str(spec), "--run-dir", str(run_dir), "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {r["fold_id"]: r for r in results(run_dir)}
    assert rows["t2-r0-f0"]["status"] == "ok" and rows["t2-r0-f1"]["status"] == "pruned"
    assert rows["t2-r0-f1"]["attempts"] == 1  # ended, not run again
    assert load_study(run_dir, "ending").trials[2].state is optuna.trial.TrialState.PRUNED
    assert journal_rows(run_dir, "SELECT state FROM search_trials WHERE trial = 2") == [("pruned",)]
