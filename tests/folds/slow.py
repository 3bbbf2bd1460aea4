"""Entry point for status tests: prints, reports, then waits.

It waits ``params.seconds`` (default 1), or until ``RUN_DIR/release`` exists, so that a
test can look at a live run and then let it finish without waiting out the clock.
"""

import sys
import time
from pathlib import Path


def train(ctx):
    print(f"hello from {ctx.fold_id}", flush=True)
    print(f"warning from {ctx.fold_id}", file=sys.stderr, flush=True)
    ctx.report(epoch=1, loss=0.5)
    release = Path(ctx.run_dir, "release")
    end = time.monotonic() + float(ctx.params.get("seconds", 1.0))
    while time.monotonic() < end and not release.exists():
        time.sleep(0.05)
    print(f"bye from {ctx.fold_id}", flush=True)
    return {"acc": 0.5 + ctx.fold / 100}
