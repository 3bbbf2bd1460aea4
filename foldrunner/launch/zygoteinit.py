"""The zygote's own side (opt-in, ``resources.zygote: true``): a fold server that has
imported the spec's ``preload`` modules (e.g. TensorFlow) and forks each fold from that state.

Forking a process that has *run* TensorFlow hangs its children (its thread pools do not
survive a fork). A process that has only *imported* TensorFlow forks safely; this server
imports and never runs anything else. To make sure, it counts its own threads once its
imports are done and checks the count again before every fork: should it ever grow
(something started a thread pool), the server refuses that fork and every later one,
the engine starts folds from the plain fold server from then on, and the folds the
zygote forked before run on untouched (the server stays up, reporting their exits).

This module is the server's side: it does its work only when imported by that server
(it heads the server's preload list after :mod:`foldrunner.launch.serverinit`, see
``foldrunner.launch.forkserver.ZYGOTE_PRELOAD``), which finds its configuration in
``FOLDRUNNER_ZYGOTE``: ``multiprocess`` passes a fork server nothing but module names, so
the orchestrator's side (:mod:`foldrunner.launch.zygote`) puts it in its own environment
for the moment the server starts. The fork server of Python 3.11 ignores an
``ImportError`` in its preload list and does not use the parent's ``sys.path`` for it,
so the imports are done here, with the parent's path, and their failure is reported
through the status file.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import sys
import traceback
from pathlib import Path

ENV = "FOLDRUNNER_ZYGOTE"
"""The environment variable the orchestrator passes the zygote's configuration in (JSON)."""

_CHILD_ENTRY = "foldrunner.child.entry"
"""What every fold forked from here runs (as in ``foldrunner.launch.forkserver.SERVER_PRELOAD``)."""


def thread_count() -> int:
    """This process's OS threads (Python's and native ones), from /proc."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"Threads:"):
                return int(line.split()[1])
    return -1  # pragma: no cover - not Linux


def _write(status: Path, text: str) -> None:
    """Replace the status file whole, never writing through a symlink planted in the run dir."""
    from foldrunner.store.paths import PUBLIC, atomic_write

    atomic_write(status, lambda tmp: tmp.write_text(text), PUBLIC)


def _refuse_request() -> None:
    """Refuse the fork request being served, and only it: close the pipes it brought
    (the asking orchestrator then reads end of file and starts the fold elsewhere) and
    raise the one error ``multiprocess``'s server loop survives. The server goes on
    serving nothing new but keeps reporting the exits of the folds it forked before.

    The request's pipes are locals of the server loop (``multiprocess.forkserver.main``),
    the frame that called ``os.fork``.
    """
    frame = sys._getframe(2)
    names = frame.f_locals
    for fd in (names.get("child_r"), names.get("child_w"), *(names.get("fds") or ())):
        if isinstance(fd, int):
            try:
                os.close(fd)
            except OSError:
                pass
    raise ConnectionAbortedError(errno.ECONNABORTED, "the zygote refuses to fork")


def _serve() -> None:
    cfg = json.loads(os.environ.pop(ENV))
    status = Path(cfg["status"])
    os.environ.update(cfg.get("env", {}))  # e.g. TF_CPP_MIN_LOG_LEVEL, thread counts: before imports
    sys.path[:0] = [p for p in cfg["sys_path"] if p not in sys.path]
    try:
        importlib.import_module(_CHILD_ENTRY)
        for name in cfg["preload"]:
            importlib.import_module(name)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit
        _write(status, "error: cannot import the preloads: "
               + "".join(traceback.format_exception_only(exc)).strip())
        os._exit(3)
    baseline = thread_count()
    real_fork = os.fork

    def checked_fork() -> int:
        now = thread_count()
        if now > baseline:
            _write(status, f"error: refused to fork: the server's threads went from {baseline} "
                   f"to {now} after its imports (something ran in it)")
            _refuse_request()
        pid = real_fork()
        if pid == 0:
            os.fork = real_fork  # the fold's own forks are its own business
        return pid

    os.fork = checked_fork
    _write(status, f"ready: {baseline} threads after importing {cfg['preload']}")


if os.environ.get(ENV):
    _serve()
