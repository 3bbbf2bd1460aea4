"""Every sampler and pruner runs a short study; the live view counts its trials."""

from __future__ import annotations

import io

import optuna
import pytest
from rich.console import Console

import foldrunner
from conftest import FOLDS
from foldrunner.engine.events import TrialCounts
from foldrunner.orchestrate.api import RunOptions
from foldrunner.ui.live import LiveView

pytestmark = pytest.mark.timeout(120)


def small_spec(name: str, sampler: str, pruner: object) -> dict:
    return {
        "name": name, "entrypoint": "search_folds:synthetic", "workdir": str(FOLDS),
        "params": {"sleep": 0.0},
        "search": {"optuna": {"trials": 7, "sampler": sampler, "seed": 1, "pruner": pruner,
                              "space": {"x": {"uniform": [0.0, 1.0]}, "n": {"randint": [0, 3]},
                                        "kind": {"choice": [[1, 2], {"a": 1}, "plain"]}}}},
        "cv": {"folds": 3}, "objective": {"metric": "score", "mode": "max"},
        "resources": {"gpus": "none", "workers": 2}, "limits": {"timeout": "30s", "grace": "1s"},
        "retry": {"attempts": 1},
    }


@pytest.mark.parametrize("sampler, pruner", [
    ("random", {"wilcoxon": {"p_threshold": 0.5, "warmup_folds": 1}}),
    ("cmaes", "median"),
    ("qmc", "none"),
    ("tpe", {"percentile": {"percentile": 20, "min_trials": 2}}),
])
def test_each_sampler_and_pruner_runs_a_study_that_matches_the_results(tmp_path, sampler, pruner):
    name = f"s-{sampler}"
    df = foldrunner.run(small_spec(name, sampler, pruner), run_dir=tmp_path / "run",
                        options=RunOptions(handle_signals=False))
    assert df["trial"].nunique() == 7 and len(df) == 21
    assert set(df["status"]) <= {"ok", "pruned"}
    # a choice among lists and mappings reaches the fold as written in the spec
    assert set(df["param_kind"]) <= {"[1, 2]", '{"a": 1}', "plain"}
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'run' / 'optuna.sqlite'}")
    assert len(study.trials) == 7
    for t in study.trials:
        rows = df[df["trial"] == t.number]
        assert t.state.name == ("PRUNED" if (rows["status"] == "pruned").any() else "COMPLETE")


def test_the_percentile_pruner_prunes_more_than_the_median_on_the_same_points(tmp_path):
    """One worker and the random sampler: both runs try the same points in the same order,
    and the fold offsets are the same for every trial: keeping the best quarter prunes
    every trial that the median prunes, some sooner, and launches fewer folds."""
    runs = {}
    for pruner in ({"median": {"min_trials": 2}}, {"percentile": {"percentile": 25, "min_trials": 2}}):
        kind = next(iter(pruner))
        spec = small_spec(f"cmp-{kind}", "random", pruner)
        spec["search"]["optuna"]["trials"] = 12
        spec["resources"]["workers"] = 1
        runs[kind] = foldrunner.run(spec, run_dir=tmp_path / kind, options=RunOptions(handle_signals=False))
    median, pct = runs["median"], runs["percentile"]
    assert (median.groupby("trial")["param_x"].first() == pct.groupby("trial")["param_x"].first()).all()
    pruned = {k: set(df.loc[df["status"] == "pruned", "trial"]) for k, df in runs.items()}
    assert pruned["median"] and pruned["median"] <= pruned["percentile"], pruned
    assert (pct["attempts"] > 0).sum() < (median["attempts"] > 0).sum()  # fewer folds launched
    best = median[median["fold"] == 0].set_index("trial")["metric_score"].idxmax()
    assert best not in pruned["median"]  # the best point survives both
    assert best not in pruned["percentile"]


@pytest.mark.parametrize("pruner, first", [
    ({"median": {"min_trials": 1}}, 1),
    ({"wilcoxon": {"p_threshold": 0.5, "warmup_folds": 2}}, 2),  # Optuna's: max(2, warmup) folds
])
def test_with_a_pruner_a_new_trial_starts_before_a_trial_runs_two_folds_at_once(tmp_path, pruner, first):
    """A trial's next fold waits for the fold whose end may prune it (from fold ``first``
    on) while the budget has trials left: two workers run two trials' folds side by side.
    Once every trial is asked, a trial's remaining folds run side by side again (no slot
    idles)."""
    spec = small_spec("held", "random", pruner)
    spec["search"]["optuna"]["trials"] = 6
    spec["cv"]["folds"] = 4
    spec["params"]["sleep"] = 0.2
    df = foldrunner.run(spec, run_dir=tmp_path / "run", options=RunOptions(handle_signals=False))
    ran = df[df["attempts"] > 0]
    last_asked = ran.loc[ran["trial"] == ran["trial"].max(), "started_at"].min()
    for trial, folds in ran.groupby("trial"):
        folds = folds.sort_values("fold")
        for (_, a), (_, b) in zip(folds.iterrows(), folds.iloc[1:].iterrows()):
            if b["fold"] >= first:
                assert b["started_at"] >= a["ended_at"] or b["started_at"] >= last_asked, (trial, a, b)
    assert (df["trial"] == 0).sum() == 4  # and still one row per fold


def test_the_live_view_shows_trials_complete_pruned_and_in_flight():
    out = io.StringIO()
    view = LiveView(Console(file=out, width=120, force_terminal=False))
    view.trials(TrialCounts(budget=20, complete=3, pruned=2, failed=0, in_flight=2, skipped_folds=0))
    view.total = 100
    view.trials(TrialCounts(budget=20, complete=3, pruned=2, failed=0, in_flight=2, skipped_folds=6))
    view.console.print(view._render())
    text = out.getvalue()
    assert "trials 5/20: complete 3  pruned 2  in flight 2" in text
    assert "6/100 folds" in text  # a pruned trial's unlaunched folds are done too


def test_concurrent_trials_caps_the_trials_in_flight(tmp_path):
    spec = small_spec("capped", "tpe", "none")
    spec["search"]["optuna"].update(trials=4, concurrent_trials=1)
    spec["cv"]["folds"] = 2
    df = foldrunner.run(spec, run_dir=tmp_path / "run", options=RunOptions(handle_signals=False))
    assert sorted(df["trial"].unique()) == [0, 1, 2, 3] and set(df["status"]) == {"ok"}
    spans = df.groupby("trial").agg(start=("started_at", "min"), end=("ended_at", "max"))
    for t in range(3):  # with two workers, the next trial waits for the one in flight to end
        assert spans.loc[t + 1, "start"] >= spans.loc[t, "end"]
