"""Entry points for engine tests: stalls, lingering threads, memory hogs, slow folds."""

import threading
import time
from pathlib import Path


def stall(ctx):
    ctx.report(epoch=0)
    time.sleep(60)


def linger(ctx):
    threading.Thread(target=time.sleep, args=(60,), daemon=False).start()
    return {"acc": 0.9}


def hog(ctx):
    chunks = []
    t0 = time.monotonic()
    while True:
        chunks.append(bytearray(20 * 1024 * 1024))  # touched: zero-filled pages are real RSS
        for b in chunks[-1:]:
            b[::4096] = b"\x01" * len(b[::4096])
        if len(chunks) * 20 >= 150 and not Path(ctx.run_dir, "crossed").exists():
            Path(ctx.run_dir, "crossed").write_text(repr(time.time()))
        time.sleep(0.05)
        if time.monotonic() - t0 > 30:
            return {"mb": len(chunks) * 20}


def slow(ctx):
    time.sleep(ctx.params.get("seconds", 0.3))
    return {"acc": 0.5 + ctx.fold / 100}


def spawn_and_hang(ctx):
    """Leave a grandchild that outlives the fold (parent-death signals are not inherited)."""
    import subprocess

    if Path(ctx.run_dir, "finish").exists():
        return {"acc": 1.0}
    p = subprocess.Popen(["sleep", "300"])
    Path(ctx.run_dir, f"grandchild.{ctx.fold_id}.pid").write_text(str(p.pid))
    time.sleep(300)


def suicide_by_sigkill(ctx):
    """Dies the way an OOM kill looks from outside: SIGKILL that the orchestrator did not send."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
