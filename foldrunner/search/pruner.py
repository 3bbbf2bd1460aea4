"""The fold-aware median pruner: like with like, whatever order folds finish in.

A trial's folds are numbered by *step* in launch order (replicate-major, then fold).
Its *prefix* is the number of steps 0, 1, ... that have a score without a gap: fold 2
finishing before fold 1 does not make a prefix of 3 until fold 1 is in. When a trial's
prefix grows to ``q``, its mean over steps ``0..q-1`` is compared with the mean over the
same ``q`` steps of every other trial whose prefix reached ``q`` — finished, in flight or
pruned (a pruned trial keeps its place in the reference group at the steps it reached).
It is pruned when it is strictly worse than their median, once ``warmup_folds`` steps are
behind it and at least ``min_trials`` others are in the group.

Optuna's ``MedianPruner`` does not do this: it compares a trial's *best* intermediate
value so far (one lucky fold protects it for good), against completed trials only, at
one step index that means "the k-th report", not "fold k".
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping

Scores = Mapping[int, float]
"""A trial's objective by step (only the steps that ended ``ok``)."""


def prefix(scores: Scores) -> int:
    """How many steps from 0 on have a score, without a gap."""
    n = 0
    while n in scores:
        n += 1
    return n


def prefix_mean(scores: Scores, q: int) -> float:
    """The mean over steps ``0..q-1`` (each must have a score)."""
    return statistics.fmean(scores[i] for i in range(q))


def median_verdict(scores: Scores, others: Iterable[Scores], q: int, *, maximize: bool,
                   warmup_folds: int, min_trials: int) -> str | None:
    """Why a trial whose prefix is now ``q`` is pruned at ``q``, or None to go on."""
    if q <= warmup_folds or q < 1:
        return None
    group = [prefix_mean(o, q) for o in others if prefix(o) >= q]
    if len(group) < min_trials:
        return None
    median = statistics.median(group)
    mean = prefix_mean(scores, q)
    worse = mean < median if maximize else mean > median
    if not worse:
        return None
    return (f"pruned after {q} fold(s): mean {mean:.6g} over them is "
            f"{'below' if maximize else 'above'} the median {median:.6g} of {len(group)} other"
            f" trial(s) over the same {q} fold(s)")
