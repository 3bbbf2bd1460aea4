"""Entry points for the Ray backend's tests."""

import json
import os
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
