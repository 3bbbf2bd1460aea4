"""Entry points whose values change type between folds: the results table must cope."""

from pathlib import Path


def train(ctx):
    """``score``: a number in even folds, ``"n/a"`` in odd ones.

    With ``params.fail_once`` set to a fold index, that fold raises the first time it
    runs in this run directory (a marker file remembers it), so a ``--resume`` has work.
    """
    if ctx.params.get("fail_once") == ctx.fold:
        marker = Path(ctx.run_dir, f"failed-once.{ctx.fold_id}")
        if not marker.exists():
            marker.write_text("failed once\n")
            raise RuntimeError("this fold fails the first time it runs")
    return {"score": 0.5 + ctx.fold / 10 if ctx.fold % 2 == 0 else "n/a"}


def constant(ctx):
    """The same numeric result whatever the params (a grid over mixed types)."""
    return {"acc": 1.0}
