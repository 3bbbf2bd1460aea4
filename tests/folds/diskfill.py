"""Entry point for storage-fault tests (a full disk, a read-only run dir).

Each attempt leaves a mark in ``params.marks`` (a directory outside the run dir, on a
disk that stays writable), so a test can tell which folds ran, then prints (its log),
reports (the journal's ``report``) and waits ``params.seconds``.
"""

import time
from pathlib import Path


def train(ctx):
    marks = ctx.params.get("marks")
    if marks:
        Path(marks, f"{ctx.fold_id}.{ctx.attempt}").touch()
    print(f"hello from {ctx.fold_id}", flush=True)
    ctx.report(epoch=1)
    time.sleep(float(ctx.params.get("seconds", 0.3)))
    return {"acc": 0.5 + ctx.fold / 100}
