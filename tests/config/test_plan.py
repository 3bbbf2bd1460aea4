"""Tests of foldrunner.config.plan: trials (grid, random), folds, ids, order, seeds, the plan hash."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from foldrunner.config.plan import Plan, build_plan, fold_id, trials_of
from foldrunner.config.spec import Spec, load_spec

pytestmark = pytest.mark.timeout(60)


def make_spec(tmp_path: Path, **sections: Any) -> Spec:
    """A minimal valid spec in ``tmp_path`` with ``sections`` on top."""
    raw: dict[str, Any] = {"name": "t", "entrypoint": "m:f", "workdir": str(tmp_path)}
    raw.update(sections)
    return load_spec(raw)


def random_spec(tmp_path: Path, seed: int, samples: int = 20, **space: Any) -> Spec:
    space = space or {
        "lr": {"loguniform": [1.0e-4, 1.0e-1]},
        "units": {"choice": [32, 64, 128]},
        "dropout": {"uniform": [0.0, 0.5]},
        "layers": {"randint": [1, 4]},
    }
    return make_spec(tmp_path, search={"random": {"samples": samples, "seed": seed, "space": space}})


# ---------------------------------------------------------------- trials
def test_no_search_is_one_trial_with_the_fixed_params(tmp_path):
    spec = make_spec(tmp_path, params={"epochs": 5, "opt": "adam"}, cv={"folds": 2})
    plan = build_plan(spec)
    assert plan.trials == ({"epochs": 5, "opt": "adam"},)
    assert [f.params for f in plan.folds] == [{"epochs": 5, "opt": "adam"}] * 2
    assert plan.param_names == ["epochs", "opt"]


def test_grid_is_the_cartesian_product_first_key_slowest(tmp_path):
    grid = {"units": [64, 32], "lr": [0.1, 0.01, 0.001], "act": ["relu", "tanh"]}
    spec = make_spec(tmp_path, search={"grid": grid})
    trials = trials_of(spec)
    assert trials == [
        {"units": u, "lr": lr, "act": a}
        for u in (64, 32) for lr in (0.1, 0.01, 0.001) for a in ("relu", "tanh")
    ]
    assert len(trials) == 12
    assert trials[0] == {"units": 64, "lr": 0.1, "act": "relu"}
    assert trials[1] == {"units": 64, "lr": 0.1, "act": "tanh"}
    assert trials[2] == {"units": 64, "lr": 0.01, "act": "relu"}
    assert trials[6] == {"units": 32, "lr": 0.1, "act": "relu"}
    assert trials[-1] == {"units": 32, "lr": 0.001, "act": "tanh"}
    assert build_plan(spec).param_names == ["units", "lr", "act"]


def test_grid_merges_fixed_params_and_search_keys_override_them(tmp_path):
    spec = make_spec(tmp_path, params={"epochs": 5, "lr": 0.5, "opt": "adam"},
                     search={"grid": {"lr": [0.1, 0.2], "units": [8]}})
    assert trials_of(spec) == [
        {"epochs": 5, "lr": 0.1, "opt": "adam", "units": 8},
        {"epochs": 5, "lr": 0.2, "opt": "adam", "units": 8},
    ]
    assert spec.params == {"epochs": 5, "lr": 0.5, "opt": "adam"}  # the spec is left alone
    assert build_plan(spec).param_names == ["epochs", "lr", "opt", "units"]


def test_random_merges_fixed_params_and_search_keys_override_them(tmp_path):
    spec = make_spec(tmp_path, params={"epochs": 3, "units": 7},
                     search={"random": {"samples": 5, "seed": 1,
                                        "space": {"units": {"choice": [16, 32]}}}})
    trials = trials_of(spec)
    assert len(trials) == 5
    for t in trials:
        assert set(t) == {"epochs", "units"}
        assert t["epochs"] == 3 and t["units"] in (16, 32)


def test_random_search_is_deterministic_for_a_seed(tmp_path):
    first = trials_of(random_spec(tmp_path, seed=7))
    again = trials_of(random_spec(tmp_path, seed=7))
    assert len(first) == 20
    assert first == again
    assert build_plan(random_spec(tmp_path, seed=7)).hash == build_plan(random_spec(tmp_path, seed=7)).hash


def test_random_search_differs_for_another_seed(tmp_path):
    a = trials_of(random_spec(tmp_path, seed=7))
    b = trials_of(random_spec(tmp_path, seed=8))
    assert [t["lr"] for t in a] != [t["lr"] for t in b]
    assert [t["dropout"] for t in a] != [t["dropout"] for t in b]
    assert len({t["lr"] for t in a} & {t["lr"] for t in b}) == 0


N = 4000  # samples per distribution


def test_uniform_values_within_bounds(tmp_path):
    values = [t["x"] for t in trials_of(random_spec(tmp_path, 0, N, x={"uniform": [-0.5, 0.25]}))]
    assert len(values) == N and all(isinstance(v, float) for v in values)
    assert all(-0.5 <= v <= 0.25 for v in values)
    assert min(values) < -0.49 and max(values) > 0.24  # the whole range is used
    assert abs(sum(values) / N - (-0.125)) < 0.02


def test_loguniform_values_within_bounds_and_uniform_in_log(tmp_path):
    values = [t["x"] for t in trials_of(random_spec(tmp_path, 0, N, x={"loguniform": [1e-4, 1e-1]}))]
    assert all(isinstance(v, float) and 1e-4 <= v <= 1e-1 for v in values)
    logs = [math.log10(v) for v in values]
    assert min(logs) < -3.95 and max(logs) > -1.05
    assert abs(sum(logs) / N - (-2.5)) < 0.05  # uniform in log10: mean -2.5
    assert sum(v < 1e-3 for v in values) / N == pytest.approx(1 / 3, abs=0.04)


def test_choice_values_are_the_choices_each_drawn(tmp_path):
    choices = [32, "relu", 0.5, True]
    values = [t["x"] for t in trials_of(random_spec(tmp_path, 0, N, x={"choice": choices}))]
    assert all(any(v == c and type(v) is type(c) for c in choices) for v in values)
    for c in choices:
        share = sum(v == c and type(v) is type(c) for v in values) / N
        assert share == pytest.approx(0.25, abs=0.04), c


def test_randint_includes_both_ends(tmp_path):
    values = [t["x"] for t in trials_of(random_spec(tmp_path, 0, N, x={"randint": [1, 4]}))]
    assert all(type(v) is int for v in values)
    assert set(values) == {1, 2, 3, 4}
    for k in (1, 2, 3, 4):
        assert values.count(k) / N == pytest.approx(0.25, abs=0.04), k


def test_randint_with_equal_ends_is_constant(tmp_path):
    values = [t["x"] for t in trials_of(random_spec(tmp_path, 0, 50, x={"randint": [3, 3]}))]
    assert values == [3] * 50


# ---------------------------------------------------------------- folds
def test_fold_id_format():
    assert fold_id(0, 0, 0) == "t0-r0-f0"
    assert fold_id(12, 3, 9) == "t12-r3-f9"


def test_folds_are_trial_major_with_ids_seeds_and_indices(tmp_path):
    spec = make_spec(tmp_path, params={"e": 1}, search={"grid": {"lr": [0.1, 0.2]}},
                     cv={"folds": 3, "replicates": 2, "seed": 10})
    plan = build_plan(spec)
    assert isinstance(plan, Plan)
    assert len(plan.folds) == 2 * 2 * 3
    assert [f.fold_id for f in plan.folds] == [
        "t0-r0-f0", "t0-r0-f1", "t0-r0-f2", "t0-r1-f0", "t0-r1-f1", "t0-r1-f2",
        "t1-r0-f0", "t1-r0-f1", "t1-r0-f2", "t1-r1-f0", "t1-r1-f1", "t1-r1-f2",
    ]
    assert [f.index for f in plan.folds] == list(range(12))
    assert [(f.trial, f.replicate, f.fold) for f in plan.folds[:4]] == [
        (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0)]
    assert all(f.folds == 3 for f in plan.folds)
    assert [f.seed for f in plan.folds] == [10, 10, 10, 11, 11, 11] * 2
    assert [f.params for f in plan.folds] == [{"e": 1, "lr": 0.1}] * 6 + [{"e": 1, "lr": 0.2}] * 6
    assert list(plan.by_id()) == [f.fold_id for f in plan.folds]
    assert plan.by_id()["t1-r0-f2"] == plan.folds[8]


def test_split_seed_is_cv_seed_plus_replicate_for_every_trial(tmp_path):
    spec = random_spec(tmp_path, seed=3, samples=4)
    spec = load_spec(spec, {"cv.seed": 100, "cv.replicates": 3, "cv.folds": 2})
    plan = build_plan(spec)
    assert len(plan.trials) == 4 and len(plan.folds) == 4 * 3 * 2
    for f in plan.folds:
        assert f.seed == 100 + f.replicate
    seeds_by_trial = {t: [f.seed for f in plan.folds if f.trial == t] for t in range(4)}
    assert all(s == [100, 100, 101, 101, 102, 102] for s in seeds_by_trial.values())


def test_split_seeds_stay_in_the_range_numpy_and_sklearn_accept(tmp_path):
    spec = make_spec(tmp_path, cv={"folds": 2, "replicates": 3, "seed": 2**32 - 2})
    plan = build_plan(spec)
    assert [f.seed for f in plan.folds] == [2**32 - 2] * 2 + [2**32 - 1] * 2 + [0] * 2
    for f in plan.folds:
        np.random.RandomState(f.seed)  # raises ValueError for a seed past 2**32 - 1


# ---------------------------------------------------------------- the plan hash
def grid_spec(tmp_path: Path, **overrides: Any) -> Spec:
    spec = make_spec(tmp_path, params={"epochs": 5}, search={"grid": {"lr": [0.1, 0.01]}},
                     cv={"folds": 3, "replicates": 2, "seed": 0})
    return load_spec(spec, overrides) if overrides else spec


def test_plan_hash_is_stable_across_builds(tmp_path):
    a, b = build_plan(grid_spec(tmp_path)), build_plan(grid_spec(tmp_path))
    assert a.hash == b.hash
    assert len(a.hash) == 16 and int(a.hash, 16) >= 0
    assert a == b


def test_plan_hash_ignores_what_does_not_change_the_folds(tmp_path):
    base = build_plan(grid_spec(tmp_path)).hash
    assert build_plan(grid_spec(tmp_path, **{"limits.timeout": "5m"})).hash == base
    assert build_plan(grid_spec(tmp_path, **{"retry.attempts": 1})).hash == base


@pytest.mark.parametrize("overrides", [
    {"params.epochs": 6},
    {"params.batch": 32},
    {"search.grid.lr": [0.1, 0.02]},
    {"search.grid.lr": [0.01, 0.1]},  # the same values, another order
    {"cv.folds": 4},
    {"cv.replicates": 1},
    {"cv.seed": 1},
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_plan_hash_changes_with_params_folds_and_seed(tmp_path, overrides):
    assert build_plan(grid_spec(tmp_path, **overrides)).hash != build_plan(grid_spec(tmp_path)).hash


def test_plan_hash_changes_with_the_random_seed(tmp_path):
    assert build_plan(random_spec(tmp_path, 1)).hash != build_plan(random_spec(tmp_path, 2)).hash


def test_plan_hash_tells_an_int_param_from_a_float(tmp_path):
    a = build_plan(grid_spec(tmp_path, **{"params.epochs": 5})).hash
    b = build_plan(grid_spec(tmp_path, **{"params.epochs": 5.0})).hash
    assert a != b
