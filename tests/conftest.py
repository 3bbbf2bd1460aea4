"""Shared fixtures: every test that starts processes must leave none behind."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from foldrunner.procs import proctree

HERE = Path(__file__).parent
FOLDS = HERE / "folds"

pytest_plugins = ["engine_rig"]  # the engine's ``rig`` fixture

# Every process this test session starts inherits this tag (folds keep the orchestrator's
# environment), so the leak check below sees this session's processes only, not those of
# another test run on the same machine.
SESSION_KEY = "FOLDRUNNER_TEST_SESSION"
SESSION_TAG = os.environ.setdefault(SESSION_KEY, uuid.uuid4().hex)


def _in_session(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{SESSION_KEY}={SESSION_TAG}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def surviving_fold_processes() -> list[psutil.Process]:
    """Live processes carrying a foldrunner marker, started by this test session."""
    out = []
    for p in proctree.marked_processes(""):
        if not _in_session(p.pid):
            continue
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def zombie_children() -> list[int]:
    out = []
    for pid in proctree.child_pids():
        ids = proctree.stat_ids(pid)
        if ids is not None and ids[0] == "Z":
            out.append(pid)
    return out


def _describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid} ({proctree.read_marker(p.pid)}: {' '.join(p.cmdline())[:80]})"
    except psutil.Error:
        return str(p.pid)


@pytest.fixture(autouse=True)
def no_process_survives():
    """After each test: no fold process alive, no zombie left among our children."""
    before = set(proctree.child_pids())
    yield
    deadline = time.monotonic() + 3.0
    while True:
        alive = surviving_fold_processes()
        zombies = [z for z in zombie_children() if z not in before]
        if not alive and not zombies:
            break
        if time.monotonic() > deadline:
            for p in alive:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            pytest.fail(
                f"processes survived the test: {[_describe(p) for p in alive]}; zombies {zombies}"
            )
        time.sleep(0.05)


def base_spec(tmp_path: Path, **sections) -> dict:
    """A small valid spec dict over the test folds, with fast limits."""
    spec = {
        "name": "t",
        "entrypoint": "matrix:train",
        "workdir": str(FOLDS),
        "cv": {"folds": 1},
        "resources": {"gpus": "none", "workers": 2},
        "limits": {"timeout": "20s", "grace": "1s", "exit_timeout": "5s"},
        "retry": {"attempts": 2, "on": ["timeout", "crashed", "memory"], "backoff": 0},
        "output": {"dir": str(tmp_path / "run")},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


pid_alive = proctree.pid_alive


def start_run(spec: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    """``foldrunner run SPEC --run-dir RUN_DIR ...`` in a session of its own (as in tmux)."""
    return subprocess.Popen(
        [sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir", str(run_dir), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def journal_rows(run_dir: Path, columns: str = "fold_id, attempt, status, started_at") -> list[tuple]:
    """The journal's attempts (read-only; empty while there is no journal yet)."""
    path = run_dir / "journal.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(f"SELECT {columns} FROM attempts ORDER BY fold_id, attempt").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()
