"""The child's side: one fresh process runs one attempt of one fold.

:func:`child_main` is the whole life of a cold fold's process, :func:`spare_main` that of
a warm spare. Each takes its own session, watches the orchestrator's lifeline
(:class:`~foldrunner.child.lifeline.Lifeline`: it ends its own tree when the orchestrator
dies), sets its environment (the spec's ``env``, ``CUDA_VISIBLE_DEVICES``, TensorFlow's
memory growth, the run's marker), sends its stdout and stderr to the attempt's log, runs
the task (:func:`foldrunner.child.task.run_task`) and always ends by sending a
:class:`~foldrunner.wire.messages.Result` through its own result pipe. It never raises:
any exception becomes an outcome.

This module is preloaded by the fold server (``foldrunner.launch.forkserver.SERVER_PRELOAD``)
and the zygote, so it imports only what is light.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import pickle
import signal
import stat
import sys
import time
import traceback
from typing import Any

from foldrunner.child.lifeline import Lifeline
from foldrunner.child.task import MARKER_ENV, ChildTask, SpareInit, maxrss_kb, run_task
from foldrunner.launch.postfork import drop_inherited_server_fds
from foldrunner.wire.framing import FrameTooLarge, Sender, encode_message, read_frame
from foldrunner.wire.messages import PreloadError, Ready, Result, Started
from foldrunner.wire.outcome import ChildOutcome, Status

_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, arg: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(option, arg, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to set
        pass


def _become_fold_process(result_fd: int, lifeline_fd: int | None,
                         grace: float) -> tuple[Sender, Lifeline | None]:
    """Own session, subreaper, default signals, private pipes, and a watch on the
    orchestrator: when it dies, this fold ends its tree on its own (:class:`Lifeline`).

    No parent-death signal: the parent is the fold server, and a SIGKILL when it exits
    would end this process before its descendants had their grace.
    """
    os.setsid()
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    drop_inherited_server_fds()
    os.set_inheritable(result_fd, False)  # a fold's own children never hold it
    lifeline = None if lifeline_fd is None else Lifeline(lifeline_fd, grace)
    return Sender(result_fd), lifeline


def _redirect_output(log_path: str) -> None:
    """Send fds 1 and 2 (and so every subprocess's output) to the attempt's log.

    The log is never opened through a symlink planted in its place (``O_NOFOLLOW``), nor
    is anything but a regular file used: then the output stays where it was, with a line
    there saying why.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(log_path, flags, 0o644)
    except OSError as exc:
        print(f"foldrunner: output not captured in {log_path}: {exc}", file=sys.stderr, flush=True)
    else:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        for target in (1, 2) if regular else ():
            os.dup2(fd, target)
        os.close(fd)
        if not regular:
            print(f"foldrunner: output not captured in {log_path}: not a regular file",
                  file=sys.stderr, flush=True)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)


def _set_environment(env: dict[str, str], gpu: int | None, marker: str, workdir: str) -> None:
    """The spec's ``env``, the GPU (empty without one), memory growth, the marker, workdir.

    ``gpu`` is NVML's index, which orders GPUs by PCI bus; CUDA's own order puts the
    fastest first, so on a machine with mixed GPUs the index would name another one:
    CUDA is told to count as NVML does (unless the spec's ``env`` says otherwise)."""
    os.environ.update(env)
    os.environ["CUDA_DEVICE_ORDER"] = env.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if gpu is None else str(gpu)
    os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    os.environ[MARKER_ENV] = marker
    if workdir and workdir not in sys.path:
        sys.path.insert(0, workdir)


def _result_frame(outcome: ChildOutcome) -> bytes:
    """The frame of the fold's result; a result that cannot be sent becomes an error."""
    try:
        return encode_message(Result(outcome))
    except Exception as exc:  # noqa: BLE001 - any pickling failure becomes an error outcome
        if isinstance(exc, FrameTooLarge):
            msg, kind = f"the result is too large to send: {exc}", "ResultTooLarge"
        else:
            msg = f"the result could not be pickled: {type(exc).__name__}: {exc}"
            kind = "UnpicklableResult"
        print(f"foldrunner: {msg}", file=sys.stderr)
        err = ChildOutcome(
            status=Status.ERROR,
            error_type=kind,
            error=msg,
            traceback="".join(traceback.format_exception(exc)),
            started_at=outcome.started_at,
            ended_at=outcome.ended_at,
            maxrss_kb=outcome.maxrss_kb,
        )
        return encode_message(Result(err))


def _serve(task: ChildTask, send: Sender) -> None:
    """Run one attempt in this process and send its outcome (the rest of a fold's life)."""
    _redirect_output(task.log_path)
    _set_environment(task.env, task.gpu, task.marker, task.workdir)
    os.environ["FOLDRUNNER_RUN_DIR"] = task.run_dir
    send(Started(os.getpid(), time.time()))
    outcome = run_task(task, send)
    outcome.maxrss_kb = maxrss_kb()
    frame = _result_frame(outcome)
    if outcome.status is Status.ERROR and outcome.traceback:
        sys.stderr.write(outcome.traceback)
    send.send_bytes(frame)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def child_main(task_blob: bytes, result_conn: Any, lifeline: Any = None) -> None:
    """The target of every cold fold process (see the module's docstring)."""
    task: ChildTask = pickle.loads(task_blob)
    send, watch = _become_fold_process(result_conn.fileno(), _fd(lifeline), task.grace)
    try:
        _serve(task, send)
    finally:
        if watch is not None:
            watch.at_exit()


def _fd(conn: Any) -> int | None:
    return None if conn is None else int(conn.fileno())


def spare_main(init_blob: bytes, task_conn: Any, result_conn: Any, lifeline: Any = None) -> None:
    """A warm spare: set the slot's GPU, import the preloads, wait for one fold, run it.

    ``CUDA_VISIBLE_DEVICES`` is set before anything is imported. A spare serves exactly
    one fold; when the orchestrator closes its task pipe without sending one, it exits.
    """
    init: SpareInit = pickle.loads(init_blob)
    send, watch = _become_fold_process(result_conn.fileno(), _fd(lifeline), init.grace)
    _redirect_output(init.log_path)
    _set_environment(init.env, init.gpu, init.marker, init.workdir)
    for name in init.preload:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - reported, then the fold imports what it needs
            send(PreloadError(name, f"{type(exc).__name__}: {exc}"))
    send(Ready(os.getpid(), time.time()))
    task_fd = task_conn.fileno()
    os.set_inheritable(task_fd, False)
    frame = read_frame(task_fd)
    if frame is None:
        return
    task: ChildTask = pickle.loads(frame)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        if os.path.getsize(init.log_path) == 0:
            os.unlink(init.log_path)  # nothing was said while waiting: keep logs/ tidy
    except OSError:
        pass
    try:
        _serve(task, send)
    finally:
        if watch is not None:
            watch.at_exit()
