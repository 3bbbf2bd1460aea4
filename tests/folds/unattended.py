"""Entry points for the unattended-run tests: grandchildren, grace, lingering results."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

SLEEPER = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"]


def _note(ctx, name: str, text: str) -> None:
    Path(ctx.run_dir, f"{name}.{ctx.fold_id}.{ctx.attempt}").write_text(text)


def _ignores_term(pid: int) -> bool:
    """Whether ``pid`` has set SIGTERM to be ignored (its ``SigIgn`` mask in /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    except (OSError, StopIteration):
        return False
    return bool(mask & (1 << (signal.SIGTERM - 1)))


def family(ctx):
    """A grandchild in the fold's group, one in a session of its own, both ignoring
    SIGTERM; then hang. Their pids go to files in the run dir once both ignore SIGTERM
    (a loaded machine takes a while to start Python)."""
    a = subprocess.Popen(SLEEPER)
    b = subprocess.Popen(SLEEPER, start_new_session=True)
    while not (_ignores_term(a.pid) and _ignores_term(b.pid)):
        time.sleep(0.01)
    _note(ctx, "kids", f"{a.pid} {b.pid}")
    _note(ctx, "fold", str(os.getpid()))
    time.sleep(600)


def graceful(ctx):
    """On SIGTERM: note it, take 0.3 s to clean up, exit. Otherwise run for ``seconds``."""
    def on_term(signum, frame):
        _note(ctx, "term", repr(time.time()))
        time.sleep(0.3)
        sys.exit(3)

    signal.signal(signal.SIGTERM, on_term)
    _note(ctx, "fold", str(os.getpid()))
    time.sleep(ctx.params.get("seconds", 60))
    return {"acc": 1.0}


def stubborn(ctx):
    """Ignores SIGTERM and hangs."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _note(ctx, "fold", str(os.getpid()))
    time.sleep(600)


def result_then_linger(ctx):
    """Returns its result at once, then a non-daemon thread keeps the process alive."""
    if ctx.fold == 0:
        threading.Thread(target=time.sleep, args=(600,), daemon=False).start()
    _note(ctx, "ran", str(os.getpid()))
    return {"acc": 0.5 + ctx.fold}


def crash_once(ctx):
    """Hangs on its first attempt (to be interrupted), crashes on the second, then works."""
    n = len(list(Path(ctx.run_dir).glob(f"ran.{ctx.fold_id}.*")))
    _note(ctx, "ran", str(os.getpid()))
    if n == 0:
        time.sleep(600)
    if n == 1:
        os._exit(9)
    return {"acc": 1.0}


def escapees(ctx):
    """Returns at once, leaving a clean-environment `setsid` sleeper (no marker) and
    short-lived `setsid` children that end on their own."""
    p = subprocess.Popen(SLEEPER, env={}, start_new_session=True)
    short = [subprocess.Popen(["sleep", "0.2"], start_new_session=True) for _ in range(3)]
    _note(ctx, "kids", " ".join(str(x.pid) for x in [p, *short]))
    return {"acc": 1.0}


def slow(ctx):
    _note(ctx, "fold", str(os.getpid()))
    time.sleep(ctx.params.get("seconds", 60))
    return {"acc": 1.0}
