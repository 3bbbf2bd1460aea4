"""Starting fold processes: a cold fold, a warm spare, their pipes and the lifeline.

A fold's process is started by foldrunner's own fold server (or a zygote, or spawn: see
:mod:`foldrunner.launch.forkserver`) and runs :func:`foldrunner.child.entry.child_main`
(a spare: :func:`~foldrunner.child.entry.spare_main`). It gets the task as one pickled
object, the write end of its own result pipe, and the read end of the orchestrator's
lifeline; the orchestrator keeps the read end of the result pipe, non-blocking.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Any

import multiprocess

from foldrunner.child.entry import child_main, spare_main
from foldrunner.child.task import ChildTask, SpareInit
from foldrunner.launch.forkserver import FOLD_SERVER, ZYGOTES, FoldServer, start_process


def server_pids() -> set[int]:
    """Pids of the processes foldrunner keeps as its own children: its fork servers (the
    fold server and any zygote), which no sweep of leftovers may take."""
    servers = [FOLD_SERVER, *ZYGOTES]
    return {s.pid for s in servers if s.pid}


@dataclass
class Child:
    """A started fold process and the parent's end of its result pipe (non-blocking)."""

    process: Any
    reader: Any
    fd: int
    pid: int
    sentinel: int

    def close(self) -> None:
        try:
            self.reader.close()
        except OSError:
            pass
        try:
            self.process.close()
        except ValueError:  # still running: the engine kills before it closes
            pass


_LIFELINE: list[Any] = []
"""``[reader, writer]`` of this process's lifeline pipe (made on first use)."""


def lifeline() -> Any:
    """The read end of this orchestrator's lifeline, handed to every fold and spare.

    Only this process holds the write end (never inherited: not by the fork servers, not
    by anything a fold starts). When this process dies, however it dies, every fold sees
    end of file on its read end and ends its own tree (``foldrunner.child.lifeline``).
    """
    if not _LIFELINE:
        reader, writer = multiprocess.Pipe(duplex=False)
        _LIFELINE.extend([reader, writer])
    return _LIFELINE[0]


def start_child(task: ChildTask, method: str = "forkserver", server: FoldServer | None = None) -> Child:
    """Start one fold process for ``task`` (from ``server``, a zygote, when given)."""
    blob = pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
    reader, writer = multiprocess.Pipe(duplex=False)
    try:
        name = f"foldrunner {task.fold_id}.{task.attempt}"
        proc = start_process(child_main, (blob, writer, lifeline()), name, method, server)
    finally:
        writer.close()
    fd = reader.fileno()
    os.set_blocking(fd, False)
    return Child(proc, reader, fd, int(proc.pid), int(proc.sentinel))


def start_spare(init: SpareInit, name: str, method: str = "forkserver") -> tuple[Child, int]:
    """Start a warm spare; return it and the parent's end of its task pipe (blocking)."""
    blob = pickle.dumps(init, protocol=pickle.HIGHEST_PROTOCOL)
    reader, writer = multiprocess.Pipe(duplex=False)
    task_r, task_w = multiprocess.Pipe(duplex=False)
    try:
        proc = start_process(spare_main, (blob, task_r, writer, lifeline()), name, method)
    finally:
        writer.close()
        task_r.close()
    fd = reader.fileno()
    os.set_blocking(fd, False)
    task_fd = os.dup(task_w.fileno())
    task_w.close()
    return Child(proc, reader, fd, int(proc.pid), int(proc.sentinel)), task_fd
