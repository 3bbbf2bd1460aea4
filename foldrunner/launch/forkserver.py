"""How a fold's process is started through ``multiprocess``, and every patch that takes.

Children are made by ``forkserver`` (default) or ``spawn``; never by forking the
orchestrator, which may hold TensorFlow or CUDA state. ``multiprocess`` has one global
fork server, configured by whoever starts it first, that preloads the caller's
``__main__``, and its children re-import that ``__main__``. foldrunner works around each
of those here, and only here (with :mod:`foldrunner.launch.postfork`, which runs in the
child, and the modules its servers preload, :mod:`foldrunner.launch.serverinit` and
:mod:`foldrunner.launch.zygoteinit`):

* :class:`FoldServer`: foldrunner's own fork servers (the fold server, and the zygotes),
  apart from the global one, preloading an explicit list (:data:`SERVER_PRELOAD`); it
  reads and resets the server's private ``_forkserver_pid`` and ``_forkserver_alive_fd``.
* :class:`_FoldPopen`: ``multiprocess``'s forkserver ``Popen`` with the server to fork
  from taken off the process object (:func:`start_process`), and the preparation data
  stripped of the parent's ``__main__``.
* :func:`_without_main_module`: for ``spawn``, ``multiprocess.spawn.get_preparation_data``
  is patched for the length of one ``Process.start()``, so the child does not import the
  parent's ``__main__`` either.
"""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import multiprocess
from multiprocess import forkserver as mp_forkserver
from multiprocess import popen_forkserver, reduction, util
from multiprocess import spawn as mp_spawn
from multiprocess.context import ForkServerProcess, set_spawning_popen

START_METHODS = ("forkserver", "spawn")

SERVER_PRELOAD = ["foldrunner.launch.serverinit", "foldrunner.child.entry"]
"""What the fold server imports once, before it forks any fold: nothing heavy."""
ZYGOTE_PRELOAD = ["foldrunner.launch.serverinit", "foldrunner.launch.zygoteinit"]
"""What a zygote imports itself (:mod:`foldrunner.launch.zygoteinit` imports the rest)."""

_MAIN_KEYS = ("init_main_from_path", "init_main_from_name")
"""The keys of the preparation data that would make a child import the parent's ``__main__``."""

_SERVER_ATTR = "_foldrunner_server"
"""The attribute of a process object that names the server to fork it from; taken off the
object before it is pickled to the server (:meth:`_FoldPopen._launch`)."""


class FoldServer(mp_forkserver.ForkServer):  # type: ignore[misc]
    """foldrunner's own fork server, apart from ``multiprocess``'s global one.

    The global server is configured by whoever starts it first (the caller's code may
    have started it preloading a ``__main__`` that imported TensorFlow); this one
    preloads only what it is given (:data:`SERVER_PRELOAD` by default) and never runs an
    op of anything.
    """

    _forkserver_pid: int | None
    _forkserver_alive_fd: int | None
    """Private attributes of ``multiprocess``'s ``ForkServer``: the server's pid, and the
    write end of the "alive" pipe whose end of file makes it exit."""

    def __init__(self, preload: list[str] | None = None) -> None:
        super().__init__()
        self.set_forkserver_preload(list(preload or SERVER_PRELOAD))

    @property
    def pid(self) -> int | None:
        return self._forkserver_pid

    def stop(self, wait: float) -> None:
        """Close its "alive" pipe (it exits once its last fold has); SIGKILL it if it
        lingers past ``wait``; reap it."""
        pid = self._forkserver_pid
        if self._forkserver_alive_fd is not None:
            os.close(self._forkserver_alive_fd)
            self._forkserver_alive_fd = None
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
        self._forkserver_pid = None


FOLD_SERVER = FoldServer()
"""The plain fold server, started on the first fold."""

ZYGOTES: list[FoldServer] = []
"""Zygotes started and not yet stopped (:mod:`foldrunner.launch.zygote`); with
:data:`FOLD_SERVER`, the servers of ``foldrunner.launch.launcher.server_pids``."""


def _preparation_data(name: str) -> dict[str, Any]:
    """What a child needs to set itself up, less the parent's ``__main__``."""
    data: dict[str, Any] = mp_spawn.get_preparation_data(name)
    for key in _MAIN_KEYS:
        data.pop(key, None)
    return data


class _FoldPopen(popen_forkserver.Popen):  # type: ignore[misc]
    """``multiprocess``'s forkserver ``Popen._launch``, forking from the process object's
    own server (:data:`FOLD_SERVER` unless :func:`start_process` named another)."""

    def _launch(self, process_obj: Any) -> None:
        server = vars(process_obj).pop(_SERVER_ATTR, None) or FOLD_SERVER
        prep_data = _preparation_data(process_obj._name)
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
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

    Scoped to one ``Process.start()`` call made by the orchestrator's thread.
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


def start_process(target: Any, args: tuple[Any, ...], name: str, method: str,
                  server: FoldServer | None = None) -> Any:
    """Start ``target(*args)`` in a new process by ``method``; with ``forkserver``, forked
    from ``server`` (a zygote) or else from :data:`FOLD_SERVER`. Returns the started
    ``multiprocess`` process."""
    if method not in START_METHODS:
        raise ValueError(f"start method must be one of {START_METHODS}; got {method!r}")
    if method == "forkserver":
        proc = _FoldProcess(target=target, args=args, name=name, daemon=False)
        if server is not None:
            setattr(proc, _SERVER_ATTR, server)
        proc.start()
    else:
        proc = multiprocess.get_context("spawn").Process(
            target=target, args=args, name=name, daemon=False
        )
        with _without_main_module():
            proc.start()
    return proc
