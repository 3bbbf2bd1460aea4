"""Entry points for the Ray backend's tests."""

import json
import os
import threading
import time
from pathlib import Path


def span(ctx):
    """Sleep ``seconds``; record when, and on which GPU, in the ``spans`` folder."""
    t0 = time.time()
    time.sleep(ctx.params.get("seconds", 0.0))
    spans = Path(ctx.params["spans"])
    spans.mkdir(parents=True, exist_ok=True)
    (spans / f"{ctx.fold_id}.{ctx.attempt}.json").write_text(json.dumps(
        {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "gpu": ctx.gpu, "t0": t0,
         "t1": time.time(), "pid": os.getpid()}))
    return {"acc": 0.5 + ctx.fold / 100, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


def aged(ctx):
    """Sleep ``seconds``; return how old this process was when the entry point began (a
    warm spare was started before its fold was given to it; a cold start was not)."""
    with open("/proc/self/stat") as f:
        started_ticks = int(f.read().rpartition(")")[2].split()[19])
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - started_ticks / os.sysconf("SC_CLK_TCK")
    time.sleep(ctx.params.get("seconds", 0.0))
    return {"age": age}


def exits_slowly(ctx):
    """Sleep ``seconds`` and return, then keep the process ``exit`` seconds more (a
    non-daemon thread, as a TensorFlow fold's teardown takes tens of milliseconds): its span
    runs from the entry point's first line to the process's last moments."""
    t0 = time.time()
    time.sleep(ctx.params.get("seconds", 0.0))
    spans = Path(ctx.params["spans"])
    spans.mkdir(parents=True, exist_ok=True)

    def last_moments():
        time.sleep(ctx.params.get("exit", 0.0))
        (spans / f"{ctx.fold_id}.{ctx.attempt}.json").write_text(json.dumps(
            {"t0": t0, "t1": time.time(), "pid": os.getpid()}))

    threading.Thread(target=last_moments, daemon=False).start()
    return {"acc": 0.5 + ctx.fold / 100}
