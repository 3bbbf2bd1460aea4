"""Tests of FoldContext.split: partitions, seeding, stratification, groups, clear errors."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from foldrunner.child.context import FoldContext

pytestmark = pytest.mark.timeout(60)


def ctx(fold: int = 0, folds: int = 5, seed: int = 0, trial: int = 0, replicate: int = 0) -> FoldContext:
    return FoldContext(params={}, trial=trial, fold=fold, folds=folds, replicate=replicate,
                       seed=seed, attempt=1, gpu=None, run_dir=Path("/nonexistent"),
                       fold_id=f"t{trial}-r{replicate}-f{fold}", log_path=Path("/nonexistent.log"),
                       _send=None)


def all_splits(folds: int, seed: int, X: Any, trial: int = 0, **kw: Any) -> list[tuple[list[int], list[int]]]:
    out = []
    for k in range(folds):
        train, val = ctx(k, folds, seed, trial).split(X, **kw)
        out.append((list(map(int, train)), list(map(int, val))))
    return out


N = 47
X = np.arange(N * 2).reshape(N, 2)
Y = np.array([0] * 20 + [1] * 17 + [2] * 10)  # 20, 17 and 10 samples per class
GROUPS = np.repeat(np.arange(12), [3, 5, 2, 4, 6, 1, 4, 5, 3, 6, 4, 4])  # 12 groups, 47 samples
KINDS = {"kfold": {}, "stratified": {"y": Y}, "group": {"groups": GROUPS}}


# ---------------------------------------------------------------- partitions
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("folds", [2, 3, 5])
def test_validation_sets_partition_the_indices(kind, folds):
    splits = all_splits(folds, 7, X, kind=kind, **KINDS[kind])
    assert len(splits) == folds
    vals = [v for _, v in splits]
    assert sorted(i for v in vals for i in v) == list(range(N))  # each index exactly once
    for train, val in splits:
        assert val and train
        assert set(train).isdisjoint(val)
        assert sorted(train + val) == list(range(N))


def test_kfold_sizes_differ_by_at_most_one():
    sizes = sorted(len(v) for _, v in all_splits(5, 0, X))
    assert sizes == [9, 9, 9, 10, 10]


def test_split_returns_numpy_index_arrays_usable_on_lists():
    train, val = ctx(1, 4, 3).split(list(range(10)))
    assert isinstance(train, np.ndarray) and isinstance(val, np.ndarray)
    assert train.dtype.kind == "i" and len(train) + len(val) == 10


# ---------------------------------------------------------------- seeding
@pytest.mark.parametrize("kind", list(KINDS))
def test_the_same_seed_gives_the_same_splits_for_every_trial(kind):
    a = all_splits(5, 11, X, trial=0, kind=kind, **KINDS[kind])
    b = all_splits(5, 11, X, trial=3, kind=kind, **KINDS[kind])
    assert a == b


@pytest.mark.parametrize("kind", list(KINDS))
def test_another_replicate_s_seed_gives_other_splits(kind):
    # the plan gives replicate r the seed cv.seed + r: replicates 0 and 1 of cv.seed 11
    a = all_splits(5, 11, X, kind=kind, **KINDS[kind])
    b = all_splits(5, 12, X, kind=kind, **KINDS[kind])
    assert a != b
    assert sorted(map(sorted, (v for _, v in a))) != sorted(map(sorted, (v for _, v in b)))


def test_the_replicate_number_itself_does_not_change_the_split():
    a = ctx(2, 5, seed=4, replicate=0).split(X)
    b = ctx(2, 5, seed=4, replicate=9).split(X)
    assert list(a[1]) == list(b[1])


def test_without_shuffle_kfold_is_contiguous_and_ignores_the_seed():
    a = [list(ctx(k, 3, 1).split(list(range(9)), shuffle=False)[1]) for k in range(3)]
    b = [list(ctx(k, 3, 2).split(list(range(9)), shuffle=False)[1]) for k in range(3)]
    assert a == b == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


# ---------------------------------------------------------------- stratified and group
@pytest.mark.parametrize("folds", [2, 3, 4, 5])
@pytest.mark.parametrize("seed", [0, 1, 99])
def test_stratified_keeps_class_proportions(folds, seed):
    totals = Counter(Y.tolist())
    for _, val in all_splits(folds, seed, X, kind="stratified", y=Y):
        counts = Counter(Y[val].tolist())
        for c, n_c in totals.items():
            assert abs(counts[c] - n_c / folds) <= 1, (c, counts[c], n_c / folds)


def test_stratified_accepts_a_plain_list_of_labels():
    labels = ["a", "b"] * 10  # 10 of each, 4 folds: 2.5 of each per fold
    per_fold = [Counter(labels[i] for i in val)
                for _, val in all_splits(4, 0, list(range(20)), kind="stratified", y=labels)]
    assert [sum(c.values()) for c in per_fold] == [5, 5, 5, 5]
    assert all(sorted(c.values()) == [2, 3] for c in per_fold)
    assert sum(c["a"] for c in per_fold) == sum(c["b"] for c in per_fold) == 10


@pytest.mark.parametrize("folds", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("shuffle", [True, False])
def test_group_never_puts_a_group_on_both_sides(folds, seed, shuffle):
    seen_in_val: list[int] = []
    for train, val in all_splits(folds, seed, X, kind="group", groups=GROUPS, shuffle=shuffle):
        train_groups, val_groups = set(GROUPS[train].tolist()), set(GROUPS[val].tolist())
        assert train_groups.isdisjoint(val_groups)
        assert train_groups | val_groups == set(range(12))
        seen_in_val += sorted(val_groups)
    assert sorted(seen_in_val) == list(range(12))  # every group validated exactly once


# ---------------------------------------------------------------- errors
def test_stratified_without_y_is_a_clear_error():
    with pytest.raises(ValueError, match=re.escape("ctx.split(kind='stratified') needs y")):
        ctx().split(X, kind="stratified")


def test_group_without_groups_is_a_clear_error():
    with pytest.raises(ValueError, match=re.escape("ctx.split(kind='group') needs groups")):
        ctx().split(X, kind="group")


def test_fewer_samples_than_folds_is_a_clear_error():
    with pytest.raises(ValueError, match=re.escape("ctx.split: 4 samples cannot give 5 folds")):
        ctx(0, 5).split(list(range(4)))


def test_fewer_groups_than_folds_is_a_clear_error():
    with pytest.raises(ValueError, match=re.escape("ctx.split: 3 distinct groups cannot give 5 folds")):
        ctx(0, 5).split(list(range(10)), groups=[0, 1, 2] * 3 + [0], kind="group")


@pytest.mark.parametrize("folds", [1, 0])
def test_fewer_than_two_folds_is_a_clear_error(folds):
    with pytest.raises(ValueError, match=re.escape(
            f"ctx.split needs cv.folds >= 2; this spec has cv.folds = {folds}")):
        ctx(0, folds).split(X)


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match=re.escape(
            "ctx.split: kind must be one of kfold, stratified, group; got 'shuffle'")):
        ctx().split(X, kind="shuffle")


def test_the_largest_seed_is_accepted():
    train, val = ctx(0, 3, seed=2**32 - 1).split(X)
    assert len(train) + len(val) == N
