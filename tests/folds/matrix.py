"""Entry points for the crash matrix: each misbehaves in one way, chosen by params.case."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class Unpicklable(float):
    """Looks like a number, refuses to be pickled."""

    def __reduce__(self):  # type: ignore[override]
        raise TypeError("this float refuses to be pickled")


class ResourceExhaustedError(Exception):
    """Named like TensorFlow's out-of-memory error (tf.errors.ResourceExhaustedError)."""


class LocalFloat(float):
    """Pickles fine here; the orchestrator cannot import this module to unpickle it."""


def _note_pid(ctx, name: str, pid: int) -> None:
    Path(ctx.run_dir, f"{name}.{ctx.fold_id}.{ctx.attempt}.pid").write_text(str(pid))


def _escape(ctx) -> int:
    """Start a grandchild that leaves the fold's session (setsid) and sleeps."""
    p = subprocess.Popen(["sleep", "300"], start_new_session=True)
    _note_pid(ctx, "grandchild", p.pid)
    return p.pid


def _daemonize(ctx) -> None:
    """The classic double fork: the grandchild's parent exits at once, it calls setsid."""
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    open(sys.argv[1], 'w').write(str(os.getpid()))\n"
        "    time.sleep(300)\n"
        "os._exit(0)\n"
    )
    target = Path(ctx.run_dir, f"daemon.{ctx.fold_id}.{ctx.attempt}.pid")
    subprocess.run([sys.executable, "-c", code, str(target)], check=True)
    for _ in range(200):
        if target.exists() and target.read_text():
            return
        time.sleep(0.01)


def train(ctx):
    case = ctx.params["case"]
    print(f"case {case} attempt {ctx.attempt} pid {os.getpid()}", flush=True)
    if case == "return":
        return {"acc": 0.75, "fold": ctx.fold, "label": "fine"}
    if case == "raise":
        raise ValueError("boom 42")
    if case == "exit0":
        sys.exit(0)
    if case == "exit3":
        sys.exit(3)
    if case == "os_exit":
        os._exit(7)
    if case == "segv":
        ctypes.string_at(0)
    if case == "sigkill_outside":
        _note_pid(ctx, "fold", os.getpid())
        time.sleep(60)
    if case == "hang":
        time.sleep(60)
    if case == "hang_ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)
    if case == "escape_setsid":
        _escape(ctx)
        return {"acc": 1.0}
    if case == "escape_setsid_hang":
        _escape(ctx)
        time.sleep(60)
    if case == "daemonize":
        _daemonize(ctx)
        return {"acc": 1.0}
    if case == "big_result":
        return {"blob": "x" * 40_000_000, "acc": 1.0}
    if case == "unpicklable":
        return {"acc": Unpicklable(0.5)}
    if case == "unimportable_result":
        return {"acc": LocalFloat(0.5)}
    if case == "big_stdout":
        chunk = "y" * 1023 + "\n"
        for _ in range(100 * 1024):
            sys.stdout.write(chunk)
        sys.stdout.flush()
        return {"acc": 1.0}
    if case == "fail_once":
        if ctx.attempt == 1:
            os._exit(1)
        return {"acc": 0.5}
    if case == "bad_return":
        return [1, 2, 3]
    if case == "memory_error":
        raise MemoryError("simulated allocation failure")
    if case == "resource_exhausted":
        raise ResourceExhaustedError("OOM when allocating tensor with shape[4096,4096]")
    if case == "report":
        for i in range(3):
            ctx.report(epoch=i, loss=1.0 / (i + 1))
        return {"acc": 0.9}
    raise AssertionError(f"unknown case {case}")
