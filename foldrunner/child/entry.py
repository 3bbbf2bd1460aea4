"""The child's side: one fresh process runs one attempt of one fold.

:func:`child_main` is the whole life of a fold's process. It takes its own session,
watches the orchestrator's lifeline (and ends its own tree when the orchestrator
dies), sets its environment (the spec's
``env``, ``CUDA_VISIBLE_DEVICES``, TensorFlow's memory growth, the run's marker),
sends its stdout and stderr to the attempt's log, imports the entry point, calls it
with a :class:`FoldContext` and always ends by sending a typed :class:`ChildOutcome`
through its own result pipe. It never raises: any exception becomes an outcome.

This module is preloaded by the fold server, so it imports only what is light.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import pickle
import resource
import select
import signal
import stat
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from foldrunner.wire import messages as wire
from foldrunner.child.context import FoldContext, check_metrics
from foldrunner.wire.outcome import ChildOutcome, Status
from foldrunner.wire.messages import FRAME_HEADER, FrameTooLarge
# the wire's functions, importable from here as before (see foldrunner.wire.messages)
from foldrunner.wire.messages import MAX_FRAME_SIZE as MAX_FRAME_SIZE
from foldrunner.wire.messages import decode_frames as decode_frames
from foldrunner.wire.messages import encode_frame as encode_frame
from foldrunner.wire.messages import read_messages as read_messages

#: the environment variable every process of a fold inherits: ``<run token>/<fold id>/<attempt>``
MARKER_ENV = "FOLDRUNNER_FOLD"

_PR_SET_CHILD_SUBREAPER = 36

#: exception type names that mean the fold ran out of memory
MEMORY_ERROR_NAMES = frozenset({"MemoryError", "ResourceExhaustedError", "OutOfMemoryError"})


@dataclass
class ChildTask:
    """Everything one attempt needs, sent to the child as one pickled object."""

    fold_id: str
    trial: int
    replicate: int
    fold: int
    folds: int
    seed: int
    attempt: int
    params: dict[str, Any]
    gpu: int | None
    run_dir: str
    log_path: str
    workdir: str
    entrypoint: str
    """``module:function``; ignored when ``entrypoint_blob`` is set."""
    entrypoint_blob: bytes | None = None
    """A callable serialized with dill (``foldrunner.run(..., entrypoint=f)``)."""
    env: dict[str, str] = field(default_factory=dict)
    marker: str = ""
    preflight: bool = False
    """Only import the entry point and check that it is callable; do not call it."""
    grace: float = 10.0
    """``limits.grace``: what the fold's descendants get if the orchestrator dies."""


class _Sender:
    """Writes whole frames to the result pipe; safe to call from several threads."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def __call__(self, message: wire.Message) -> None:
        self.send_bytes(wire.encode_message(message))

    def send_bytes(self, data: bytes) -> None:
        view = memoryview(data)
        with self.lock:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]


def _prctl(option: int, arg: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(option, arg, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to set
        pass


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
    """The spec's ``env``, the GPU (empty without one), memory growth, the marker, workdir."""
    os.environ.update(env)
    os.environ["CUDA_VISIBLE_DEVICES"] = "" if gpu is None else str(gpu)
    os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    os.environ[MARKER_ENV] = marker
    if workdir and workdir not in sys.path:
        sys.path.insert(0, workdir)


def resolve_entrypoint(task: ChildTask) -> Callable[..., Any]:
    """Import ``module:function`` (or load the dill blob) and check it is callable."""
    if task.entrypoint_blob is not None:
        import dill

        fn = dill.loads(task.entrypoint_blob)
        name = getattr(fn, "__qualname__", repr(fn))
    else:
        module_name, _, attr = task.entrypoint.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise AttributeError(
                    f"module {module_name!r} has no attribute {attr!r}"
                    f" (from {getattr(sys.modules[module_name], '__file__', '?')})"
                ) from None
        fn, name = obj, task.entrypoint
    if not callable(fn):
        raise TypeError(f"entry point {name} is a {type(fn).__name__}, not a callable")
    return fn  # type: ignore[no-any-return]


def _is_memory_error(exc: BaseException) -> bool:
    """``MemoryError``, TensorFlow's ``ResourceExhaustedError`` (by name), or one of them
    as the cause of what was raised."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if any(c.__name__ in MEMORY_ERROR_NAMES for c in type(e).__mro__):
            return True
        e = e.__cause__ or e.__context__
    return False


def _error_outcome(exc: BaseException, started: float) -> ChildOutcome:
    name = type(exc).__name__
    return ChildOutcome(
        status=Status.ERROR,
        error_type=name,
        error=str(exc),
        traceback="".join(traceback.format_exception(exc)),
        memory_error=_is_memory_error(exc),
        started_at=started,
        ended_at=time.time(),
    )


def _maxrss_kb() -> int:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return int(max(own, kids))


def run_task(task: ChildTask, send: Callable[[Any], None]) -> ChildOutcome:
    """Run the entry point of ``task``; return its outcome (raises only ``SystemExit``)."""
    started = time.time()
    try:
        fn = resolve_entrypoint(task)
        if task.preflight:
            return ChildOutcome(status=Status.OK, started_at=started, ended_at=time.time())
        ctx = FoldContext(
            params=dict(task.params),
            trial=task.trial,
            fold=task.fold,
            folds=task.folds,
            replicate=task.replicate,
            seed=task.seed,
            attempt=task.attempt,
            gpu=task.gpu,
            run_dir=Path(task.run_dir),
            fold_id=task.fold_id,
            log_path=Path(task.log_path),
            _send=send,
        )
        started = time.time()
        metrics = check_metrics(fn(ctx))
        return ChildOutcome(
            status=Status.OK, metrics=metrics, started_at=started, ended_at=time.time()
        )
    except SystemExit as exc:
        print(
            f"foldrunner: the entry point called sys.exit({exc.code!r}) without returning a result",
            file=sys.stderr,
        )
        raise
    except BaseException as exc:  # noqa: BLE001 - the child turns every failure into an outcome
        return _error_outcome(exc, started)


def _become_fold_process(result_fd: int, lifeline_fd: int | None,
                         grace: float) -> tuple[_Sender, _Lifeline | None]:
    """Own session, subreaper, default signals, private pipes, and a watch on the
    orchestrator: when it dies, this fold ends its tree on its own (:class:`_Lifeline`).

    No parent-death signal: the parent is the fold server, and a SIGKILL when it exits
    would end this process before its descendants had their grace.
    """
    os.setsid()
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    _drop_inherited_server_fds()
    os.set_inheritable(result_fd, False)  # a fold's own children never hold it
    lifeline = None if lifeline_fd is None else _Lifeline(lifeline_fd, grace)
    return _Sender(result_fd), lifeline


def _drop_inherited_server_fds() -> None:
    """Close what ``multiprocess`` hands every child of a fork server: the server's
    "alive" pipe and the resource tracker's pipe. Held by a fold, they would keep the
    server (and the tracker) running after the orchestrator died."""
    from multiprocess import forkserver, resource_tracker

    server = forkserver._forkserver
    tracker = resource_tracker._resource_tracker
    for owner, attr in ((server, "_forkserver_alive_fd"), (tracker, "_fd")):
        fd = getattr(owner, attr, None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
            setattr(owner, attr, None)


class _Lifeline:
    """The fold's end of the orchestrator's lifeline: a pipe that reaches end of file
    when the orchestrator dies, however it dies.

    A thread waits for that end of file and then ends this fold's descendants (SIGTERM,
    ``grace``, SIGKILL) and this process. A fold that finishes while the orchestrator is
    already gone does the same before it exits (:meth:`at_exit`): its descendants would
    otherwise outlive it with nobody left to end them.
    """

    def __init__(self, fd: int, grace: float) -> None:
        # imported now, not when the orchestrator dies: by then this process may be
        # shutting down, when imports fail (and proctree imports this module)
        from foldrunner.procs import proctree

        self.fd, self.grace, self.proctree = fd, grace, proctree
        self.lock = threading.Lock()
        os.set_inheritable(fd, False)
        threading.Thread(target=self._watch, name="foldrunner-lifeline", daemon=True).start()

    def _watch(self) -> None:
        try:
            while os.read(self.fd, 64):
                pass
        except OSError:
            pass
        self.end_tree()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1.0)
        os._exit(128 + signal.SIGTERM)

    def orchestrator_gone(self) -> bool:
        """Whether the lifeline is at end of file (nothing is ever written to it)."""
        return bool(select.select([self.fd], [], [], 0)[0])

    def at_exit(self) -> None:
        """Before this fold's process exits: end its tree if nobody else will."""
        if self.orchestrator_gone():
            self.end_tree()

    def end_tree(self) -> None:
        """SIGTERM to every descendant, ``grace``, SIGKILL; reap (once, by one thread)."""
        with self.lock:
            me = os.getpid()
            print(f"foldrunner: the orchestrator is gone; ending the tree of fold process {me}",
                  file=sys.stderr, flush=True)
            deadline = time.monotonic() + self.grace
            sig = signal.SIGTERM
            while True:
                kids = self.proctree.descendant_pids(me)
                for pid in kids:
                    try:
                        os.kill(pid, sig)
                    except OSError:
                        pass
                _reap_children()
                if not kids or sig == signal.SIGKILL and time.monotonic() > deadline + 2.0:
                    return
                if time.monotonic() >= deadline:
                    sig = signal.SIGKILL
                time.sleep(0.05)


def _reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _serve(task: ChildTask, send: _Sender) -> None:
    """Run one attempt in this process and send its outcome (the rest of a fold's life)."""
    _redirect_output(task.log_path)
    _set_environment(task.env, task.gpu, task.marker, task.workdir)
    os.environ["FOLDRUNNER_RUN_DIR"] = task.run_dir
    send(wire.started(os.getpid(), time.time()))
    outcome = run_task(task, send)
    outcome.maxrss_kb = _maxrss_kb()
    try:
        frame = wire.encode_message(wire.result(outcome))
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
        frame = wire.encode_message(wire.result(err))
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


@dataclass
class SpareInit:
    """What a warm spare needs before its fold is known: its slot's GPU and the preloads."""

    gpu: int | None
    env: dict[str, str]
    workdir: str
    preload: list[str]
    log_path: str
    marker: str
    grace: float = 10.0


def _read_frame(fd: int) -> bytes | None:
    """One frame from a blocking pipe; None at end of file (the spare is not needed)."""
    head = _read_exactly(fd, FRAME_HEADER.size)
    if head is None:
        return None
    (size,) = FRAME_HEADER.unpack(head)
    return _read_exactly(fd, size)


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def spare_main(init_blob: bytes, task_conn: Any, result_conn: Any, lifeline: Any = None) -> None:
    """A warm spare: set the slot's GPU, import the preloads, wait for one fold, run it.

    ``CUDA_VISIBLE_DEVICES`` is set before anything is imported. A spare serves exactly
    one fold; when the supervisor closes its task pipe without sending one, it exits.
    """
    init: SpareInit = pickle.loads(init_blob)
    send, watch = _become_fold_process(result_conn.fileno(), _fd(lifeline), init.grace)
    _redirect_output(init.log_path)
    _set_environment(init.env, init.gpu, init.marker, init.workdir)
    for name in init.preload:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - reported, then the fold imports what it needs
            send(wire.preload_error(name, f"{type(exc).__name__}: {exc}"))
    send(wire.ready(os.getpid(), time.time()))
    task_fd = task_conn.fileno()
    os.set_inheritable(task_fd, False)
    frame = _read_frame(task_fd)
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
