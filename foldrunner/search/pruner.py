"""The fold-aware median and percentile pruners: like with like, whatever order folds
finish in.

A trial's folds are numbered by *step* in launch order (replicate-major, then fold).
Its *prefix* is the number of steps 0, 1, ... that have a score without a gap: fold 2
finishing before fold 1 does not make a prefix of 3 until fold 1 is in. When a trial's
prefix grows to ``q``, its mean over steps ``0..q-1`` is compared with the mean over the
same ``q`` steps of every other trial whose prefix reached ``q`` — finished, in flight or
pruned (a pruned trial keeps its place in the reference group at the steps it reached).
It is pruned when it is strictly worse than their median (the percentile pruner: than the
value that keeps the best ``percentile`` per cent of them), once ``warmup_folds`` steps are
behind it and at least ``min_trials`` others are in the group.

Optuna's ``MedianPruner`` does not do this: it compares a trial's *best* intermediate
value so far (one lucky fold protects it for good), against completed trials only, at
one step index that means "the k-th report", not "fold k".
"""

from __future__ import annotations

import math
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


def percentile(values: Iterable[float], p: float) -> float:
    """The ``p``-th percentile of ``values``, interpolated linearly between the two nearest
    (NumPy's default; ``p`` 50 is the median)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * p / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median_verdict(scores: Scores, others: Iterable[Scores], q: int, *, maximize: bool,
                   warmup_folds: int, min_trials: int, keep: float = 50.0) -> str | None:
    """Why a trial whose prefix is now ``q`` is pruned at ``q``, or None to go on.

    ``keep``: the per cent of the group a trial must be among the best of (50: not worse
    than their median; 25: as good as the best quarter, as Optuna's ``PercentilePruner``
    with ``percentile=25`` keeps the top 25 per cent).
    """
    if q <= warmup_folds or q < 1:
        return None
    group = [prefix_mean(o, q) for o in others if prefix(o) >= q]
    if len(group) < min_trials:
        return None
    bar = percentile(group, 100.0 - keep if maximize else keep)
    mean = prefix_mean(scores, q)
    worse = mean < bar if maximize else mean > bar
    if not worse:
        return None
    if keep == 50.0:
        what = f"the median {bar:.6g}"
    else:
        what = f"{bar:.6g}, the bar of the best {keep:g}%,"
    return (f"pruned after {q} fold(s): mean {mean:.6g} over them is "
            f"{'below' if maximize else 'above'} {what} of {len(group)} other"
            f" trial(s) over the same {q} fold(s)")
