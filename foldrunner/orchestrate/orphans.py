"""Whose run a journal is, and the processes a dead orchestrator's folds left running.

Each orchestrator records itself in the journal (:func:`owner_of`): its pid and start
time, the token in its folds' markers, and the run directory's identity. A resume ends
what the previous one left behind (:func:`end_orphans`), and only what is proven to be
that run's: never the folds of a live run, nor those of the run a directory was copied from.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import psutil

from foldrunner.procs import proctree
from foldrunner.procs.terminate import end_now
from foldrunner.store.journal import Journal
from foldrunner.store.paths import RunPaths
from foldrunner.wire.outcome import Status


def owner_of(paths: RunPaths) -> dict[str, Any]:
    """This orchestrator, as the journal records it: pid, start time, the token in its
    folds' markers, and the run directory's identity (a copy of the dir has another)."""
    me = psutil.Process()
    st = os.stat(paths.root)
    return {"pid": me.pid, "started_at": me.create_time(), "token": uuid.uuid4().hex[:8],
            "dir": str(paths.root.resolve()), "dev": st.st_dev, "ino": st.st_ino}


def _same_process(pid: Any, started_at: Any) -> bool:
    """Whether ``pid`` is alive and is the process that started at ``started_at``."""
    try:
        p = psutil.Process(int(pid))
        return p.status() != psutil.STATUS_ZOMBIE and abs(p.create_time() - float(started_at)) < 0.5
    except (psutil.NoSuchProcess, TypeError, ValueError):
        return False


def end_orphans(journal: Journal, run_id: str, grace: float, owner: Mapping[str, Any],
                notes: Callable[[str], None] = lambda _: None) -> int:
    """End the processes a dead orchestrator's folds left running; return how many.

    Only what is proven to be this run's: the previous orchestrator recorded in the
    journal must be dead (else this is a copy of a live run, or it still runs), the run
    directory must be the one it ran in (not a copy), and each process must carry that
    orchestrator's marker, or be an attempt's root (pid and start time as journaled) with
    its process group. They end through the one termination path (TERM, grace, KILL).
    """
    prev = journal.owner()
    if prev and _same_process(prev.get("pid"), prev.get("started_at")):
        notes(f"the orchestrator that last ran this journal (pid {prev['pid']}) is still "
              "running: this run directory is a copy of a live run; its folds are left alone")
        return 0
    if prev and (prev.get("dev"), prev.get("ino")) != (owner["dev"], owner["ino"]):
        notes(f"this run directory is a copy of {prev.get('dir')}: processes of that run are "
              "left alone")
        return 0
    prefix = f"{run_id}.{prev['token']}/" if prev else f"{run_id}/"
    found: dict[int, psutil.Process] = {p.pid: p for p in proctree.marked_processes(prefix)}
    pgids: list[int] = []
    for a in journal.attempts():
        if a["status"] != Status.RUNNING.value or not a["pid"]:
            continue
        if a["pid_started_at"] is None or not _same_process(a["pid"], a["pid_started_at"]):
            continue
        found[a["pid"]] = psutil.Process(a["pid"])
        pgids.append(a["pid"])
    procs = [p for p in found.values() if proctree.alive(p)]
    if not procs:
        return 0
    return end_now(procs, pgids, grace=grace, label="orphans of the previous orchestrator")
