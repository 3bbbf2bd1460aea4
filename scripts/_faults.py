"""Fold entry points with injected faults, for scripts/soak.py and scripts/chaos.py.

The fault of a fold is a pure function of its fold index (:func:`soak_kind`,
:func:`chaos_plan`), so the scripts know what each fold must end as. Every process a
fold starts on purpose is recorded as a file ``<pids_dir>/<fold_id>.<attempt>.<kind>.<pid>``
holding ``"<pid> <unix time>"`` (the param ``pids_dir``), so the scripts can check
afterwards that every one of them is gone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

SLEEP = shutil.which("sleep") or "/bin/sleep"
SH = shutil.which("sh") or "/bin/sh"

# One period of the soak's schedule: position (fold * 37) % PERIOD -> kind; the rest are "ok".
PERIOD = 100
SOAK_SCHEDULE = {
    0: "hang",           # sleeps past limits.timeout                      -> timeout
    1: "abort",          # os.abort()                                      -> crashed
    2: "segfault",       # ctypes.string_at(0)                             -> crashed
    3: "exit",           # sys.exit(3) without a result                    -> crashed
    4: "raise",          # ValueError                                      -> error
    5: "raise",
    6: "leak_setsid",    # setsid grandchild (sleep 600), returns at once  -> ok, grandchild ended
    7: "leak_setsid",
    8: "clean_env",      # env={} setsid grandchild (no marker)            -> ok, grandchild ended
    9: "clean_env",
    10: "double_fork",   # sh -c 'sleep 600 &' in a new session, sh exits -> ok, grandchild ended
    11: "short_child",   # setsid child that exits on its own (zombie)     -> ok, reaped
    12: "short_child",
    13: "short_child",
    14: "linger",        # non-daemon thread alive after the result        -> ok, lingered
}
SOAK_EXPECTED = {
    "ok": "ok", "hang": "timeout", "abort": "crashed", "segfault": "crashed", "exit": "crashed",
    "raise": "error", "leak_setsid": "ok", "clean_env": "ok", "double_fork": "ok",
    "short_child": "ok", "linger": "ok",
}


def soak_kind(fold: int) -> str:
    """The fault of soak fold ``fold`` (spread evenly: 37 is prime to PERIOD)."""
    return SOAK_SCHEDULE.get((fold * 37) % PERIOD, "ok")


def _record(ctx, kind: str, pid: int) -> None:
    d = ctx.params.get("pids_dir")
    if not d:
        return
    name = f"{ctx.fold_id}.{ctx.attempt}.{kind}.{pid}"
    tmp = Path(d, "." + name)
    tmp.write_text(f"{pid} {time.time():.3f}\n")
    os.replace(tmp, Path(d, name))


def _setsid_sleep(ctx, kind: str, seconds: str = "600", clean_env: bool = False) -> int:
    p = subprocess.Popen([SLEEP, seconds], start_new_session=True, stdin=subprocess.DEVNULL,
                         env={} if clean_env else None)
    _record(ctx, kind, p.pid)
    return p.pid


def _double_fork(ctx) -> int:
    """A grandchild whose parent (sh) exits at once: it escapes twice (setsid + orphaned)."""
    out = subprocess.run([SH, "-c", f"{SLEEP} 600 </dev/null >/dev/null 2>&1 & echo $!"],
                         start_new_session=True, capture_output=True, text=True, check=True)
    pid = int(out.stdout.strip())
    _record(ctx, "double_fork", pid)
    return pid


def soak_index(params: dict, fold: int) -> int:
    """The soak's running fold number: cv.folds is capped, so long soaks are blocks (a grid)."""
    return int(params.get("block", 0)) * int(params.get("block_size", 0)) + int(fold)


def soak(ctx):
    kind = soak_kind(soak_index(ctx.params, ctx.fold))
    if kind == "hang":
        time.sleep(600)
    elif kind == "abort":
        os.abort()
    elif kind == "segfault":
        import ctypes

        ctypes.string_at(0)
    elif kind == "exit":
        raise SystemExit(3)
    elif kind == "raise":
        raise ValueError(f"injected fault in fold {ctx.fold}")
    elif kind == "leak_setsid":
        _setsid_sleep(ctx, kind)
    elif kind == "clean_env":
        _setsid_sleep(ctx, kind, clean_env=True)
    elif kind == "double_fork":
        _double_fork(ctx)
    elif kind == "short_child":
        _setsid_sleep(ctx, kind, seconds="0.01")  # never waited for: a zombie when it ends
    elif kind == "linger":
        threading.Thread(target=time.sleep, args=(600,), daemon=False).start()
    return {"fold": ctx.fold, "acc": 1.0}


def chaos_plan(fold: int, grandchild_every: int = 4) -> tuple[float, bool]:
    """(seconds to sleep, starts a grandchild) of chaos fold ``fold``: 0.05 .. 0.3 s."""
    seconds = 0.05 + ((fold * 7919) % 26) / 100.0
    return seconds, grandchild_every > 0 and fold % grandchild_every == 1


def chaos(ctx):
    seconds, grandchild = chaos_plan(ctx.fold, int(ctx.params.get("grandchild_every", 4)))
    if grandchild:
        _setsid_sleep(ctx, "leak_setsid")
        if ctx.params.get("clean_env"):
            _setsid_sleep(ctx, "clean_env", clean_env=True)
    time.sleep(seconds)
    return {"fold": ctx.fold, "slept": seconds}
