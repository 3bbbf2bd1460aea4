"""Runs that survive their own death: kill -9 of the orchestrator, the lock, stdout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FOLDS, journal_rows, pid_alive, start_run, surviving_fold_processes

pytestmark = pytest.mark.timeout(120)

SPEC = f"""\
name: resilient
entrypoint: behave:slow
workdir: {FOLDS}
params: {{seconds: 0.4}}
search:
  grid: {{lr: [0.1, 0.01, 0.001]}}
cv: {{folds: 4}}
resources: {{gpus: none, workers: 2}}
limits: {{timeout: 30s, grace: 1s}}
retry: {{attempts: 1}}
"""


def ok_count(run_dir: Path) -> int:
    if not (run_dir / "journal.sqlite").exists():
        return 0
    return sum(1 for r in journal_rows(run_dir) if r[2] == "ok")


@pytest.mark.parametrize("kill_after_ok", [0, 3, 8])
def test_sigkill_of_the_orchestrator_then_resume(tmp_path, kill_after_ok):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    run_dir = tmp_path / "run"
    proc = start_run(spec, run_dir)
    deadline = time.monotonic() + 60
    while ok_count(run_dir) < kill_after_ok and time.monotonic() < deadline:
        time.sleep(0.02)
    if kill_after_ok == 0:  # mid-launch: wait for the first running attempts
        while time.monotonic() < deadline and not any(r[2] == "running" for r in journal_rows(run_dir)):
            time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the orchestrator's whole session
    proc.wait(10)
    before = {(r[0], r[1]): r for r in journal_rows(run_dir) if r[2] == "ok"}
    assert len(before) >= kill_after_ok

    r = subprocess.run(
        [sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir", str(run_dir), "--resume"],
        capture_output=True, text=True, timeout=90,
    )
    assert r.returncode == 0, r.stderr + r.stdout
    rows = journal_rows(run_dir)
    keys = [(row[0], row[1]) for row in rows]
    assert len(keys) == len(set(keys))  # no attempt recorded twice
    final = {}
    for fold_id, attempt, status, started in rows:
        final[fold_id] = status
    assert len(final) == 12 and set(final.values()) == {"ok"}
    for key, row in before.items():  # no fold that was ok ran again
        assert [x for x in rows if x[0] == key[0]] == [row]
        assert f"{key[0]} attempt" not in r.stdout
    results = subprocess.run(
        [sys.executable, "-m", "foldrunner", "results", str(run_dir), "--format", "json"],
        capture_output=True, text=True, timeout=60,
    )
    table = json.loads(results.stdout)
    assert len(table) == 12 and {t["status"] for t in table} == {"ok"}
    assert not surviving_fold_processes()


def test_second_run_on_a_live_run_dir_gets_75(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("seconds: 0.4", "seconds: 5"))
    run_dir = tmp_path / "run"
    first = start_run(spec, run_dir)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (run_dir / "journal.sqlite").exists():
            time.sleep(0.05)
        second = subprocess.run(
            [sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir", str(run_dir), "--resume"],
            capture_output=True, text=True, timeout=30,
        )
        assert second.returncode == 75, second.stderr
        assert f"pid {first.pid}" in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGINT)
        first.communicate(timeout=30)
    assert first.returncode == 130


def test_a_stale_lock_never_blocks_a_resume(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("seconds: 0.4", "seconds: 0.01"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (run_dir / "run.lock").write_text(dead + "\n")  # left by a dead orchestrator
    r = subprocess.run(
        [sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr


def test_a_broken_stdout_never_kills_the_run(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("seconds: 0.4", "seconds: 0.05"))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    proc.stdout.close()  # nobody reads: every write gets EPIPE
    assert proc.wait(60) == 0
    assert ok_count(run_dir) == 12


def test_grandchildren_end_on_their_own_when_the_orchestrator_is_killed(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("behave:slow", "behave:spawn_and_hang").replace(
        "grid: {lr: [0.1, 0.01, 0.001]}", "grid: {lr: [0.1]}").replace("folds: 4", "folds: 2"))
    run_dir = tmp_path / "run"
    proc = start_run(spec, run_dir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list(run_dir.glob("grandchild.*.pid"))) < 2:
        time.sleep(0.05)
    pids = [int(p.read_text()) for p in run_dir.glob("grandchild.*.pid")]
    assert len(pids) == 2
    os.killpg(proc.pid, signal.SIGKILL)  # the orchestrator's session: its folds are not in it
    proc.wait(10)
    import psutil

    deadline = time.monotonic() + 1 + 5  # grace + 5 s
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in pids)
    (run_dir / "finish").write_text("")
    r = subprocess.run(
        [sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir", str(run_dir), "--resume"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "left running by the previous orchestrator" not in r.stderr  # nothing was left
    assert psutil.pid_exists(proc.pid) is False or not pid_alive(proc.pid)
