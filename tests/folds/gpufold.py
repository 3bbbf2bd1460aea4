"""Entry points for the GPU tests (on the fake inventory)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _hold(ctx, pid, used):
    root = Path(ctx.params["fakegpu"]) / str(ctx.gpu)
    (root / str(pid)).write_text(str(used))


def pinned(ctx):
    t0 = time.time()
    time.sleep(ctx.params.get("seconds", 0.0))
    Path(ctx.run_dir, f"span.{ctx.fold_id}.{ctx.attempt}").write_text(
        json.dumps([ctx.gpu, t0, time.time()]))
    return {
        "cuda_visible_devices": os.environ["CUDA_VISIBLE_DEVICES"],
        "cuda_device_order": os.environ.get("CUDA_DEVICE_ORDER", ""),
        "ctx_gpu": -1 if ctx.gpu is None else ctx.gpu,
        "growth": os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH", ""),
    }


def bad_gpu(ctx):
    if ctx.gpu == ctx.params["broken"]:
        os._exit(9)
    return {"gpu_used": ctx.gpu}


def gpu_hog(ctx):
    _hold(ctx, os.getpid(), ctx.params["used"])
    time.sleep(30)
    return {"done": 1}


def leak_onto_gpu(ctx):
    """Leave a grandchild that ignores SIGTERM and holds GPU memory after the fold ends."""
    if ctx.fold == 0:
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
        p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        _hold(ctx, p.pid, 256 * 1024 * 1024)
        time.sleep(0.2)
        Path(ctx.run_dir, "leaker.pid").write_text(str(p.pid))
    Path(ctx.run_dir, f"start.{ctx.fold}").write_text(repr(time.time()))
    return {"fold": ctx.fold}
