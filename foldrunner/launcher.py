"""Starting fold processes: the start method, the fold server, the result pipe.

Children are made by ``forkserver`` (default) or ``spawn`` through ``multiprocess``;
never by forking the orchestrator, which may hold TensorFlow or CUDA state. The fold
server gets an explicit preload list (``foldrunner.child``, which imports nothing
heavy): by default it would preload the caller's ``__main__``, which may have imported
TensorFlow. For the same reason a fold never re-imports the caller's ``__main__``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import multiprocess
from multiprocess import spawn as mp_spawn

from .child import ChildTask, child_main

START_METHODS = ("forkserver", "spawn")
#: what the fold server imports once, before it forks any fold
SERVER_PRELOAD = ["foldrunner.child"]


def get_context(method: str = "forkserver") -> Any:
    """The ``multiprocess`` context for ``method``, its fold server preloaded safely."""
    if method not in START_METHODS:
        raise ValueError(f"start method must be one of {START_METHODS}; got {method!r}")
    ctx = multiprocess.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(list(SERVER_PRELOAD))
    return ctx


@contextmanager
def _without_main_module() -> Iterator[None]:
    """Keep the child from importing the parent's ``__main__`` (it may import TensorFlow).

    Scoped to one ``Process.start()`` call made by the supervisor's thread.
    """
    original = mp_spawn.get_preparation_data

    def preparation_data(name: str) -> dict[str, Any]:
        data: dict[str, Any] = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    mp_spawn.get_preparation_data = preparation_data
    try:
        yield
    finally:
        mp_spawn.get_preparation_data = original


@dataclass
class Child:
    """A started fold process and the parent's end of its result pipe (non-blocking)."""

    process: Any
    reader: Any
    fd: int

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @property
    def sentinel(self) -> int:
        return int(self.process.sentinel)

    def close(self) -> None:
        try:
            self.reader.close()
        except OSError:
            pass
        try:
            self.process.close()
        except ValueError:  # still running: the supervisor kills before it closes
            pass


def start_child(ctx: Any, task: ChildTask) -> Child:
    """Start one fold process for ``task``; return it with its result pipe."""
    blob = pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=child_main,
        args=(blob, writer),
        name=f"foldrunner {task.fold_id}.{task.attempt}",
        daemon=False,
    )
    try:
        with _without_main_module():
            proc.start()
    finally:
        writer.close()
    fd = reader.fileno()
    os.set_blocking(fd, False)
    return Child(proc, reader, fd)
