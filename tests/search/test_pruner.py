"""The fold-aware median and percentile pruners: like with like, pruned trials kept, order
of ends ignored."""

import statistics

from foldrunner.search.pruner import median_verdict, percentile, prefix


def verdict(scores, others, q, **kw):
    opts = {"maximize": True, "warmup_folds": 0, "min_trials": 2} | kw
    return median_verdict(scores, others, q, **opts)


def test_the_prefix_stops_at_the_first_missing_fold():
    assert prefix({}) == 0
    assert prefix({0: 1.0, 2: 1.0}) == 1
    assert prefix({1: 1.0, 0: 1.0, 2: 1.0}) == 3


def test_a_trial_is_compared_over_the_same_folds_only():
    # fold 0 is easy (0.9), fold 1 hard (0.5): a trial with fold 0 alone is not "better"
    # than the others' two-fold means, nor worse than their fold 0
    others = [{0: 0.9, 1: 0.5}, {0: 0.9, 1: 0.5}, {0: 0.9, 1: 0.5}]
    assert verdict({0: 0.9}, others, 1) is None
    assert verdict({0: 0.9, 1: 0.5}, others, 2) is None
    assert verdict({0: 0.89, 1: 0.5}, others, 2) is not None
    # only trials that reached q folds form the group
    assert verdict({0: 0.1, 1: 0.1}, [{0: 0.9}, {0: 0.9}, {0: 0.9, 1: 0.5}], 2) is None


def test_pruned_trials_stay_in_the_reference_group_and_min_mode_flips():
    pruned_early = {0: 0.25}  # a trial pruned after fold 0 still counts at fold 0
    assert verdict({0: 0.5}, [pruned_early, {0: 0.75}], 1) is None  # the median 0.5: not worse
    assert verdict({0: 0.375}, [pruned_early, {0: 0.75}], 1) is not None
    assert verdict({0: 0.375}, [pruned_early, {0: 0.75}], 1, maximize=False) is None
    assert verdict({0: 0.625}, [pruned_early, {0: 0.75}], 1, maximize=False) is not None


def test_warmup_and_min_trials():
    others = [{0: 1.0}, {0: 1.0}]
    assert verdict({0: 0.0}, others, 1, warmup_folds=1) is None
    assert verdict({0: 0.0}, others, 1, min_trials=3) is None
    assert verdict({0: 0.0}, others, 1) is not None


def test_the_percentile_pruner_keeps_the_best_share_of_the_group():
    others = [{0: v} for v in (0.1, 0.2, 0.3, 0.4, 0.5)]
    # keep 25 when maximizing: the bar is the group's 75th percentile, 0.4
    assert verdict({0: 0.39}, others, 1, keep=25.0) is not None
    assert verdict({0: 0.4}, others, 1, keep=25.0) is None
    assert verdict({0: 0.39}, others, 1) is None  # the median pruner's bar is 0.3
    # minimizing: the best quarter is at most the 25th percentile, 0.2
    assert verdict({0: 0.21}, others, 1, keep=25.0, maximize=False) is not None
    assert verdict({0: 0.2}, others, 1, keep=25.0, maximize=False) is None


def test_percentile_interpolates_as_numpy_and_50_is_the_median():
    xs = [0.3, 0.1, 0.4, 0.2]
    assert percentile(xs, 50) == statistics.median(xs)
    assert percentile(xs, 75) == 0.325  # numpy.percentile(xs, 75)
    assert percentile(xs, 0) == 0.1 and percentile(xs, 100) == 0.4
    assert percentile([7.0], 90) == 7.0
