"""Starting fold processes: the start method, the fold server, the result pipe.

Children are made by ``forkserver`` (default) or ``spawn`` through ``multiprocess``;
never by forking the orchestrator, which may hold TensorFlow or CUDA state. The fold
server gets an explicit preload list (``foldrunner.child.entry``, which imports nothing
heavy): by default it would preload the caller's ``__main__``, which may have imported
TensorFlow. For the same reason a fold never re-imports the caller's ``__main__``.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
from pathlib import Path
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import multiprocess
from multiprocess import forkserver as mp_forkserver
from multiprocess import popen_forkserver, reduction, util
from multiprocess import spawn as mp_spawn
from multiprocess.context import ForkServerProcess, set_spawning_popen

from foldrunner.child.entry import ChildTask, SpareInit, child_main, spare_main
from foldrunner.errors import FoldrunnerError

START_METHODS = ("forkserver", "spawn")
#: what the fold server imports once, before it forks any fold
SERVER_PRELOAD = ["foldrunner.launch.serverinit", "foldrunner.child.entry"]

_MAIN_KEYS = ("init_main_from_path", "init_main_from_name")


class _FoldServer(mp_forkserver.ForkServer):  # type: ignore[misc]
    """foldrunner's own fork server, apart from ``multiprocess``'s global one.

    The global server is configured by whoever starts it first (the caller's code may
    have started it preloading a ``__main__`` that imported TensorFlow); this one
    preloads only :data:`SERVER_PRELOAD` and never runs an op of anything.
    """

    def __init__(self, preload: list[str] | None = None) -> None:
        super().__init__()
        self.set_forkserver_preload(list(preload or SERVER_PRELOAD))

    @property
    def pid(self) -> int | None:
        return self._forkserver_pid  # type: ignore[no-any-return]


FOLD_SERVER = _FoldServer()
_starting_from: _FoldServer | None = None
"""The server the process being started is forked from (set around ``Process.start``)."""


def _preparation_data(name: str) -> dict[str, Any]:
    """What a child needs to set itself up, less the parent's ``__main__``."""
    data: dict[str, Any] = mp_spawn.get_preparation_data(name)
    for key in _MAIN_KEYS:
        data.pop(key, None)
    return data


class _FoldPopen(popen_forkserver.Popen):  # type: ignore[misc]
    """``multiprocess``'s forkserver Popen, bound to :data:`FOLD_SERVER`."""

    def _launch(self, process_obj: Any) -> None:
        prep_data = _preparation_data(process_obj._name)
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        server = _starting_from or FOLD_SERVER
        self.sentinel, w = server.connect_to_new_process(self._fds)
        parent_w = os.dup(w)  # the child's sentinel of its parent, as upstream keeps it
        self.finalizer = util.Finalize(self, util.close_fds, (parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = mp_forkserver.read_signed(self.sentinel)


class _FoldProcess(ForkServerProcess):  # type: ignore[misc]
    @staticmethod
    def _Popen(process_obj: Any) -> _FoldPopen:
        return _FoldPopen(process_obj)


@contextmanager
def _without_main_module() -> Iterator[None]:
    """For spawn: keep the child from importing the parent's ``__main__``.

    Scoped to one ``Process.start()`` call made by the supervisor's thread.
    """
    original = mp_spawn.get_preparation_data

    def preparation_data(name: str) -> dict[str, Any]:
        data: dict[str, Any] = original(name)
        for key in _MAIN_KEYS:
            data.pop(key, None)
        return data

    mp_spawn.get_preparation_data = preparation_data
    try:
        yield
    finally:
        mp_spawn.get_preparation_data = original


_ZYGOTES: list[_FoldServer] = []
ZYGOTE_START_TIMEOUT = 300.0
"""Seconds the zygote may take to import its preloads before it is given up."""


class ZygoteError(FoldrunnerError):
    """The zygote could not be started; the message says why."""


def start_zygote(preload: list[str], workdir: str, env: dict[str, str], status: Path) -> _FoldServer:
    """Start a zygote for one run: it sets ``env``, imports ``preload``, then forks folds.

    ``status`` is the file where it says ``ready: ...`` or ``error: ...``.
    """
    import json
    import time

    from foldrunner.launch.zygote import ENV

    server = _FoldServer(["foldrunner.launch.serverinit", "foldrunner.launch.zygote"])
    status.unlink(missing_ok=True)
    cfg = {"preload": list(preload), "sys_path": [workdir, *sys.path], "status": str(status),
           "env": dict(env)}
    os.environ[ENV] = json.dumps(cfg)
    try:
        server.ensure_running()
    finally:
        del os.environ[ENV]
    _ZYGOTES.append(server)
    pid = server.pid
    assert pid is not None
    deadline = time.monotonic() + ZYGOTE_START_TIMEOUT
    while True:
        text = status.read_text() if status.exists() else ""
        if text.startswith("ready"):
            return server
        if text.startswith("error") or os.waitpid(pid, os.WNOHANG)[0] or time.monotonic() > deadline:
            stop_zygote(server)
            raise ZygoteError(
                text or f"the zygote did not finish importing {preload} in {ZYGOTE_START_TIMEOUT:g}s"
            )
        time.sleep(0.05)


def stop_zygote(server: _FoldServer, wait: float = 5.0) -> None:
    """End a zygote: it exits once its last fold has; SIGKILL if it lingers; reap it."""
    import signal
    import time

    pid = server.pid
    if server._forkserver_alive_fd is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
    if pid is None:
        return
    deadline = time.monotonic() + wait
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            break
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.02)
    server._forkserver_pid = None
    if server in _ZYGOTES:
        _ZYGOTES.remove(server)


def server_pids() -> set[int]:
    """Pids of the processes foldrunner keeps as its own children (its fork servers)."""
    servers = [FOLD_SERVER, *_ZYGOTES]
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
        except ValueError:  # still running: the supervisor kills before it closes
            pass


_LIFELINE: list[Any] = []
"""``[reader, writer]`` of this process's lifeline pipe (made on first use)."""


def lifeline() -> Any:
    """The read end of this orchestrator's lifeline, handed to every fold and spare.

    Only this process holds the write end (never inherited: not by the fork servers, not
    by anything a fold starts). When this process dies, however it dies, every fold sees
    end of file on its read end and ends its own tree (``foldrunner.child.entry``).
    """
    if not _LIFELINE:
        reader, writer = multiprocess.Pipe(duplex=False)
        _LIFELINE.extend([reader, writer])
    return _LIFELINE[0]


def _start(target: Any, args: tuple[Any, ...], name: str, method: str,
           server: _FoldServer | None = None) -> Any:
    if method not in START_METHODS:
        raise ValueError(f"start method must be one of {START_METHODS}; got {method!r}")
    if method == "forkserver":
        global _starting_from
        proc = _FoldProcess(target=target, args=args, name=name, daemon=False)
        _starting_from = server
        try:
            proc.start()
        finally:
            _starting_from = None
    else:
        proc = multiprocess.get_context("spawn").Process(
            target=target, args=args, name=name, daemon=False
        )
        with _without_main_module():
            proc.start()
    return proc


def start_child(task: ChildTask, method: str = "forkserver", server: _FoldServer | None = None) -> Child:
    """Start one fold process for ``task`` (from ``server``, a zygote, when given)."""
    blob = pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
    reader, writer = multiprocess.Pipe(duplex=False)
    try:
        name = f"foldrunner {task.fold_id}.{task.attempt}"
        proc = _start(child_main, (blob, writer, lifeline()), name, method, server)
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
        proc = _start(spare_main, (blob, task_r, writer, lifeline()), name, method)
    finally:
        writer.close()
        task_r.close()
    fd = reader.fileno()
    os.set_blocking(fd, False)
    task_fd = os.dup(task_w.fileno())
    task_w.close()
    return Child(proc, reader, fd, int(proc.pid), int(proc.sentinel)), task_fd
