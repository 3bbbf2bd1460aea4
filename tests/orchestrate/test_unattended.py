"""Unattended runs in the real world: the orchestrator killed outright, a closing terminal,
a scheduler's group signal, a second Ctrl-C, results that arrive before the process
ends, interrupted attempts, escaped processes, a copied run directory, spare and zygote
faults. Every run is a real `foldrunner run` in a session of its own, signalled as tmux,
cron or a user would."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import foldrunner
from conftest import FOLDS, base_spec, journal_rows, start_run, surviving_fold_processes
from foldrunner.procs import proctree

pytestmark = pytest.mark.timeout(120)
COLUMNS = "fold_id, attempt, status, error"


def write_spec(tmp_path: Path, entry: str, *, folds: int = 2, grace: str = "1s",
               extra: str = "", workers: int = 2, spares: bool = False) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: unattended\nentrypoint: unattended:{entry}\nworkdir: {FOLDS}\n"
        f"cv: {{folds: {folds}}}\n"
        f"resources: {{gpus: none, workers: {workers}, spares: {str(spares).lower()}}}\n"
        f"limits: {{timeout: 60s, grace: {grace}, exit_timeout: 60s}}\n{extra}"
    )
    return spec


def wait_for(pred, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def files(run_dir: Path, prefix: str) -> list[Path]:
    return sorted(p for p in run_dir.glob(f"{prefix}.*") if p.read_text())


def pids_in(run_dir: Path, prefix: str) -> list[int]:
    return [int(x) for p in files(run_dir, prefix) for x in p.read_text().split()]


def alive(pid: int) -> bool:
    return proctree.pid_alive(pid)


def finish(proc: subprocess.Popen) -> None:
    """Make sure a test's orchestrator session is gone, whatever happened."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate(timeout=30)


# -- 2. folds die with their orchestrator ------------------------------------------
@pytest.mark.parametrize("spares", [False, True])
def test_kill_9_of_the_orchestrator_ends_every_fold_and_server(tmp_path, spares):
    spec = write_spec(tmp_path, "family", folds=3, grace="2s", spares=spares)
    run_dir = tmp_path / "run"
    proc = start_run(spec, run_dir)
    try:
        wait_for(lambda: len(files(run_dir, "fold")) == 2, what="two folds with grandchildren")  # written after kids
        helpers = [p for p in psutil.Process(proc.pid).children() if p.is_running()]
        servers = [p for p in helpers if "forkserver" in " ".join(p.cmdline())]
        assert servers, [p.cmdline() for p in helpers]
        folds_and_kids = pids_in(run_dir, "fold") + pids_in(run_dir, "kids")
        def spare_pids() -> list[int]:  # the servers' children that run no fold
            folds = set(pids_in(run_dir, "fold"))
            return [c.pid for s in servers for c in s.children() if c.pid not in folds]

        if spares:
            wait_for(spare_pids, what="a warm spare")
        spare_pids_now = spare_pids()
        assert bool(spare_pids_now) == spares
        os.kill(proc.pid, signal.SIGKILL)  # only the orchestrator: nobody signals its folds
        killed = time.monotonic()
        proc.wait(10)
        # grace (2 s) + 5 s: every fold, grandchild (SIGTERM ignored), spare and server
        wait_for(lambda: not any(alive(p) for p in folds_and_kids + spare_pids_now)
                 and not any(s.is_running() and s.status() != psutil.STATUS_ZOMBIE for s in servers),
                 timeout=7.0, what="the folds' trees and the servers to end")
        took = time.monotonic() - killed
        assert took >= 1.5, took  # the grandchildren had their grace before SIGKILL
        assert not surviving_fold_processes()
    finally:
        finish(proc)


# -- 3. group signals are one orderly stop -------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_group_is_one_orderly_stop(tmp_path, sig):
    spec = write_spec(tmp_path, "graceful", folds=4, grace="5s", spares=True,
                      extra="params: {seconds: 60}\n")
    run_dir = tmp_path / "run"
    proc = start_run(spec, run_dir)
    try:
        wait_for(lambda: len(files(run_dir, "fold")) == 2, what="two folds running")
        time.sleep(0.3)
        os.killpg(proc.pid, sig)  # tmux's hangup, a scheduler's timeout, Ctrl-C
        out, err = proc.communicate(timeout=30)
    finally:
        finish(proc)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    # each running fold got SIGTERM and its grace (its handler ran to the end)
    assert len(files(run_dir, "term")) == 2
    statuses = [r[2] for r in journal_rows(run_dir, COLUMNS)]
    assert statuses == ["cancelled", "cancelled"], journal_rows(run_dir, COLUMNS)


def test_a_second_ctrl_c_ends_a_fold_that_ignores_sigterm_at_once(tmp_path):
    spec = write_spec(tmp_path, "stubborn", folds=1, grace="60s")
    run_dir = tmp_path / "run"
    proc = start_run(spec, run_dir)
    try:
        wait_for(lambda: len(files(run_dir, "fold")) == 1, what="the fold running")
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(1.0)
        assert proc.poll() is None  # the fold ignores SIGTERM: the first stop waits
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=20)
        took = time.monotonic() - t0
    finally:
        finish(proc)
    assert proc.returncode == 130
    assert took < 5.0, took  # not the 60 s grace
    [row] = journal_rows(run_dir, COLUMNS)
    assert row[2] == "cancelled"
    assert "still alive" not in row[3], row[3]  # it was not given its 60 s of grace


# -- 4. a result is journaled when it arrives ----------------------------------------
def test_a_result_is_journaled_when_it_arrives_and_never_run_again(tmp_path):
    spec = write_spec(tmp_path, "result_then_linger", folds=2)
    run_dir = tmp_path / "run"
    proc = start_run(spec, run_dir)
    try:
        wait_for(lambda: ("t0-r0-f0", 1, "ok") in [r[:3] for r in journal_rows(run_dir, COLUMNS)],
                 what="fold 0's ok in the journal")
        lingering = pids_in(run_dir, "ran")
        assert any(alive(p) for p in lingering)  # its process still runs (a non-daemon thread)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        finish(proc)
    r = subprocess.run(
        [sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir", str(run_dir), "--resume"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert len(files(run_dir, "ran.t0-r0-f0")) == 1  # not run again
    df = foldrunner.load_results(run_dir)
    assert list(df["status"]) == ["ok", "ok"]
    assert df.loc[df["fold"] == 0, "metric_acc"].item() == 0.5


# -- 5. cancelled attempts do not use up the retry budget ----------------------------
def test_cancelled_attempts_do_not_count_against_retry_attempts(tmp_path):
    spec = write_spec(tmp_path, "crash_once", folds=1,
                      extra="retry: {attempts: 2, on: [crashed], backoff: 0}\n")
    run_dir = tmp_path / "run"
    proc = start_run(spec, run_dir)
    try:
        wait_for(lambda: len(files(run_dir, "ran")) == 1, what="the first attempt")
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        finish(proc)
    assert proc.returncode == 130
    r = subprocess.run(
        [sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir", str(run_dir), "--resume"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    # attempt 1 cancelled (not counted), attempt 2 crashed (1 of 2), attempt 3 ok
    assert [x[2] for x in journal_rows(run_dir, COLUMNS)] == ["cancelled", "crashed", "ok"]


# -- 6. nothing escapes --------------------------------------------------------------
def test_escapees_without_a_marker_and_short_lived_ones_leave_nothing(tmp_path):
    spec = base_spec(tmp_path, entrypoint="unattended:escapees", cv={"folds": 4},
                     limits={"grace": "1s"}, resources={"spares": False})
    df = foldrunner.run(spec)
    assert list(df["status"]) == ["ok"] * 4
    kids = pids_in(tmp_path / "run", "kids")
    assert len(kids) == 16
    wait_for(lambda: not any(alive(p) for p in kids), timeout=3.0, what="escapees to end")
    zombies = [p for p in proctree.child_pids() if (proctree.stat_ids(p) or ("",))[0] == "Z"]
    assert zombies == []


# -- 7. the journal knows whose run it is --------------------------------------------
def test_resuming_a_copy_of_a_live_run_dir_never_touches_the_live_runs_folds(tmp_path):
    spec = write_spec(tmp_path, "slow", folds=2, extra="params: {seconds: 60}\n")
    run_dir, copy = tmp_path / "run", tmp_path / "copy"
    proc = start_run(spec, run_dir)
    try:
        wait_for(lambda: len(files(run_dir, "fold")) == 2, what="two folds running")
        live = pids_in(run_dir, "fold")
        shutil.copytree(run_dir, copy, symlinks=True)
        for f in copy.glob("fold.*"):
            f.unlink()
        r = subprocess.run(
            [sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir", str(copy),
             "--resume", "--deadline", "2s"],
            capture_output=True, text=True, timeout=60,
        )
        assert "copy" in r.stderr, r.stderr
        assert "ended" not in r.stderr
        assert all(alive(p) for p in live)  # the live run's folds are untouched
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        finish(proc)
    assert proc.returncode == 130


def test_resume_ends_the_orphans_of_a_dead_orchestrator_by_group(tmp_path):
    # a long grace: the folds still end their trees on their own, the resume comes first
    spec = write_spec(tmp_path, "family", folds=2, grace="60s")
    run_dir = tmp_path / "run"
    proc = start_run(spec, run_dir)
    try:
        wait_for(lambda: len(files(run_dir, "fold")) == 2, what="two folds with grandchildren")  # written after kids
        kids = pids_in(run_dir, "kids") + pids_in(run_dir, "fold")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        finish(proc)
    time.sleep(0.5)
    in_group = [int(p.read_text().split()[0]) for p in files(run_dir, "kids")]
    assert all(alive(p) for p in in_group + pids_in(run_dir, "fold")), (
        in_group, pids_in(run_dir, "fold"), [alive(p) for p in in_group + pids_in(run_dir, "fold")])
    r = subprocess.run(
        [sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir", str(run_dir),
         "--resume", "--deadline", "1s", "-o", "limits.grace=1s"],
        capture_output=True, text=True, timeout=90,
    )
    assert "left running by the previous orchestrator" in r.stderr, r.stderr
    wait_for(lambda: not any(alive(p) for p in kids), timeout=5.0, what="the orphans to end")


# -- 8. spare and zygote faults are local ---------------------------------------------
def test_a_spare_that_died_before_its_handover_gives_the_fold_to_another(tmp_path):
    from foldrunner.child.task import ChildTask, SpareInit
    from foldrunner.launch.launcher import server_pids, start_spare
    from foldrunner.store.paths import RunPaths
    from foldrunner.launch.spares import Spare, SparePool
    from foldrunner.procs.terminate import Terminator

    paths = RunPaths(tmp_path / "run")
    paths.make()
    notes: list[str] = []
    pool = SparePool(enabled=True, preload=[], env={}, workdir="", run_id="r", paths=paths,
                     start_method="forkserver", notes=notes.append,
                     terminator=Terminator(server_pids))  # earlier tests' fork servers are ours
    init = SpareInit(gpu=None, env={}, workdir="", preload=[], log_path=str(paths.logs / "s.log"),
                     marker="r/spare/0/1", grace=1.0)
    child, task_fd = start_spare(init, "test spare")
    spare = Spare(0, None, child, task_fd, init.marker, Path(init.log_path), time.monotonic())
    os.kill(child.pid, signal.SIGKILL)
    child.process.join(5)
    task = ChildTask(fold_id="t0-r0-f0", trial=0, replicate=0, fold=0, folds=1, seed=0,
                     attempt=1, params={}, gpu=None, run_dir=str(paths.root),
                     log_path=str(paths.log("t0-r0-f0", 1)), workdir="", entrypoint="x:y")
    assert pool.hand_over(spare, task) is False  # no BrokenPipeError: the fold goes elsewhere
    assert any("spare of slot 0" in n for n in notes), notes
    pool.term.wait(time.monotonic() + 5)
