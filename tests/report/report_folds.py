"""Entry points of the report's tests: one fold per outcome, each reporting a learning curve."""

import os
import signal
import time


def train_fold(ctx):
    mode = ctx.params["mode"]
    lr = ctx.params["lr"]
    print(f"fold {ctx.fold_id} mode={mode} lr={lr}", flush=True)
    for epoch in range(1, 6):
        ctx.report(epoch=epoch, loss=round(1.0 / (epoch + ctx.fold + lr), 4), acc=epoch / 10)
    if mode in ("good", "better"):
        base = 0.9 if mode == "better" else 0.7
        return {"score": base + lr + 0.01 * ctx.fold, "loss": 0.1}
    if mode == "error":
        print("about to raise", flush=True)
        raise ValueError(f"bad input in {ctx.fold_id}")
    if mode == "crash":
        print("about to die", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "memory":
        raise MemoryError(f"no memory left in {ctx.fold_id}")
    if mode == "stall":  # no report for longer than limits.stall: timeout
        time.sleep(60)
    if mode == "slow":  # reports on until the deadline cancels it
        while True:
            ctx.report(alive=1)
            time.sleep(0.2)
    raise AssertionError(mode)


def reporter(ctx):
    """Reports ``calls`` times; fold 1's first attempt then fails (and is retried)."""
    for i in range(ctx.params["calls"]):
        ctx.report(epoch=i + 1, loss=1.0 / (i + 1), note="text")
    if ctx.fold == 1 and ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"score": 1.0 + ctx.fold}
