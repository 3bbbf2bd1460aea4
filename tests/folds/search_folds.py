"""Entry points for the adaptive search tests: fast synthetic objectives."""

import time


def synthetic(ctx):
    """A smooth hill over ``x`` in [0, 1] with a flat bad region above 0.6; folds differ in
    difficulty (fold k adds -0.05 k), so only like-with-like comparisons are fair."""
    time.sleep(ctx.params.get("sleep", 0.02))
    x = ctx.params["x"]
    good = 1.0 - (x - 0.3) ** 2 if x < 0.6 else 0.1
    return {"score": good - 0.05 * ctx.fold + 0.001 * ctx.params.get("n", 0)}


def fold_only(ctx):
    """A score that depends on the fold index only; later folds finish first."""
    time.sleep(0.02 + 0.06 * (ctx.folds - 1 - ctx.fold))
    return {"score": 1.0 - 0.1 * ctx.fold}


def slow_synthetic(ctx):
    time.sleep(ctx.params.get("sleep", 0.3))
    return synthetic(ctx)


def flaky_synthetic(ctx):
    """``synthetic``, but fold 1's first attempt fails (retried with ``retry.on: [error]``)."""
    if ctx.fold == 1 and ctx.attempt == 1:
        raise ValueError("fold 1 fails once")
    return synthetic(ctx)
