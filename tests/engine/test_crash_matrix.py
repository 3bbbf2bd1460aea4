"""The crash matrix: one misbehaving fold per case, each mapped to its exact outcome.

Every case runs through the real engine, with real processes, under both start
methods; after each, no process of the fold survives (checked here for the fold's
grandchildren and by the autouse fixture for every marked process).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

import foldrunner
from conftest import base_spec, pid_alive

pytestmark = pytest.mark.timeout(90)

# case, expected status, text expected in `error`, expected attempts (retry: 2 attempts
# on timeout/crashed/memory), limits overrides
MATRIX = [
    ("return", "ok", "", 1, {}),
    ("raise", "error", "ValueError: boom 42", 1, {}),
    ("exit0", "crashed", "exited with code 0 without sending a result", 2, {}),
    ("exit3", "crashed", "exited with code 3 without sending a result", 2, {}),
    ("os_exit", "crashed", "exited with code 7 without sending a result", 2, {}),
    ("segv", "crashed", "killed by SIGSEGV without sending a result", 2, {}),
    ("sigkill_outside", "crashed", "killed by SIGKILL without sending a result", 1, {}),
    ("hang", "timeout", "timed out after 1s", 2, {"timeout": "1s"}),
    ("hang_ignore_term", "timeout", "killed with SIGKILL", 2, {"timeout": "1s", "grace": "0.5s"}),
    ("escape_setsid", "ok", "", 1, {}),
    ("escape_setsid_hang", "timeout", "timed out after 1s", 2, {"timeout": "1s"}),
    ("daemonize", "ok", "", 1, {}),
    ("big_result", "ok", "", 1, {}),
    ("unpicklable", "error", "could not be pickled", 1, {}),
    ("unimportable_result", "crashed", "could not be unpickled: it refers to matrix.LocalFloat", 2, {}),
    ("big_stdout", "ok", "", 1, {}),
    ("fail_once", "ok", "", 2, {}),
    ("bad_return", "error", "must return a mapping of metric name", 1, {}),
    ("memory_error", "memory", "MemoryError: simulated allocation failure", 2, {}),
    ("resource_exhausted", "memory", "ResourceExhaustedError: OOM when allocating", 2, {}),
]


def _kill_when_started(run_dir: Path, stop: threading.Event) -> None:
    """Play the user with `kill -9`: SIGKILL the fold once it has written its pid."""
    while not stop.is_set():
        for f in run_dir.glob("fold.*.pid"):
            text = f.read_text()
            if text:
                os.kill(int(text), signal.SIGKILL)
                f.unlink()
                return
        time.sleep(0.02)


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
@pytest.mark.parametrize("case,status,error,attempts,limits", MATRIX, ids=[m[0] for m in MATRIX])
def test_crash_matrix(tmp_path, case, status, error, attempts, limits, start_method):
    spec = base_spec(tmp_path, params={"case": case}, limits=limits)
    if case == "sigkill_outside":
        spec["retry"]["attempts"] = 1
    run_dir = tmp_path / "run"
    stop = threading.Event()
    killer = None
    if case == "sigkill_outside":
        run_dir.mkdir()
        killer = threading.Thread(target=_kill_when_started, args=(run_dir, stop), daemon=True)
        killer.start()
    opts = foldrunner.RunOptions(start_method=start_method)
    t0 = time.monotonic()
    try:
        df = foldrunner.run(spec, options=opts)
    finally:
        stop.set()
        if killer is not None:
            killer.join(5)
    elapsed = time.monotonic() - t0

    assert len(df) == 1
    row = df.iloc[0]
    assert row["status"] == status, row["error"]
    assert error in row["error"]
    if status == "ok":
        assert row["error"] == ""
    assert row["attempts"] == attempts
    assert row["fold_id"] == "t0-r0-f0"
    assert row["param_case"] == case

    # every grandchild the fold started is gone
    for f in list(run_dir.glob("grandchild.*.pid")) + list(run_dir.glob("daemon.*.pid")):
        pid = int(f.read_text())
        assert not pid_alive(pid), f"{f.name}: process {pid} survived"

    # the journal holds every attempt; the log of each attempt exists
    journal = foldrunner.load_results(run_dir)
    assert list(journal["status"]) == [status]
    for n in range(1, attempts + 1):
        assert (run_dir / "logs" / f"t0-r0-f0.{n}.log").exists()

    if case == "big_result":
        assert len(row["metric_blob"]) == 40_000_000
    if case == "big_stdout":
        assert (run_dir / "logs" / "t0-r0-f0.1.log").stat().st_size >= 100 * 1024 * 1024
    if case == "return":
        assert row["metric_acc"] == 0.75 and row["metric_label"] == "fine"
        assert row["peak_rss_mb"] > 5
    if case in ("hang", "escape_setsid_hang"):
        assert elapsed < 2 * (1 + 1) + 8  # two attempts of 1s, each ended within grace
    if case == "hang_ignore_term":
        log = (run_dir / "logs" / "t0-r0-f0.1.log").read_text()
        assert "case hang_ignore_term attempt 1" in log
    if case == "raise":
        tb = (run_dir / "logs" / "t0-r0-f0.1.log").read_text()
        assert "Traceback" in tb and "boom 42" in tb
