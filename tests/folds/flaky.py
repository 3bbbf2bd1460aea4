"""Fails while a flag file exists in the run dir's parent; hangs when asked to."""

import time
from pathlib import Path


def train(ctx):
    if ctx.params.get("hang") or (Path(ctx.run_dir).parent / "hang").exists():
        time.sleep(120)
    flag = Path(ctx.run_dir).parent / f"fail-{ctx.fold}"
    if flag.exists():
        raise RuntimeError(f"flag {flag.name} is set")
    return {"acc": 0.5 + ctx.fold / 100, "trial_lr": ctx.params.get("lr", 0.0)}
