"""A preload for the spare pool's tests: its import finishes only once the test opens its
gate (the file named by GATED_PRELOAD_GATE), or after 30 seconds."""

import os
import time

_gate = os.environ.get("GATED_PRELOAD_GATE")
_deadline = time.monotonic() + 30
while _gate and not os.path.exists(_gate) and time.monotonic() < _deadline:
    time.sleep(0.02)
