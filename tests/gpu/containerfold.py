"""Entry points of tests/gpu/test_pids.py (the fake NVML of ``fakegpu``)."""

import subprocess
import sys
import time
from pathlib import Path


def quick_leak(ctx):
    """Fold 0 leaves a grandchild that ignores SIGTERM and holds GPU memory, and returns at
    at once (as soon as the grandchild ignores SIGTERM): the grandchild is rarely seen in
the fold's tree, and is found by its marker."""
    if ctx.fold == 0:
        code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print(1, flush=True); time.sleep(60)")
        p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                             stdout=subprocess.PIPE)
        p.stdout.readline()  # SIGTERM is ignored from here on
        Path(ctx.params["fakegpu"], str(ctx.gpu), str(p.pid)).write_text(str(256 * 1024 * 1024))
        Path(ctx.run_dir, "leaker.pid").write_text(str(p.pid))
    Path(ctx.run_dir, f"start.{ctx.fold}").write_text(repr(time.time()))
    return {"fold": ctx.fold}
