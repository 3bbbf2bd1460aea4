"""Process trees: find every process of a fold, signal them, reap what comes back to us.

A fold's process takes its own session, so its process group holds every descendant
that did not call ``setsid``. Descendants that did are found as the root's children
(psutil), and by the marker every descendant inherits in its environment
(:data:`foldrunner.child.task.MARKER_ENV`). The orchestrator is a child subreaper: what a
fold leaves behind when it dies comes back to the orchestrator, and is found among its
own children. Only those processes are ever reaped (``waitpid`` by pid, never ``-1``).
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Iterable, Iterator

import psutil

from foldrunner.child.task import MARKER_ENV

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_MARKER_KEY = MARKER_ENV.encode() + b"="


def set_subreaper(on: bool = True) -> bool:
    """Make this process a child subreaper (Linux); return the previous setting."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        old = ctypes.c_int(0)
        libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(old), 0, 0, 0)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)
        return bool(old.value)
    except (OSError, AttributeError):  # not Linux
        return False


def child_pids(pid: int | None = None) -> list[int]:
    """The direct children of ``pid`` (default: this process), from /proc, cheaply."""
    pid = os.getpid() if pid is None else pid
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


def descendant_pids(pid: int) -> list[int]:
    """Every live (not zombie) descendant of ``pid``, from /proc's children lists: cheap,
    and free of psutil's scan of every process."""
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = child_pids(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return [k for k in out if (stat_ids(k) or ("Z",))[0] != "Z"]


def read_marker(pid: int) -> str | None:
    """The fold marker in the environment of ``pid``, or None (none, gone, a zombie)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return None
    for item in data.split(b"\0"):
        if item.startswith(_MARKER_KEY):
            return item[len(_MARKER_KEY) :].decode(errors="replace")
    return None


def stat_ids(pid: int) -> tuple[str, int, int] | None:
    """``(state, pgid, sid)`` of ``pid`` from /proc/<pid>/stat, or None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2 :].split()
    return rest[0].decode(), int(rest[2]), int(rest[3])


def marked_processes(prefix: str) -> Iterator[psutil.Process]:
    """Every live process whose marker starts with ``prefix`` (a scan of /proc)."""
    me = os.getpid()
    for pid in psutil.pids():
        if pid == me:
            continue
        marker = read_marker(pid)
        if marker is not None and marker.startswith(prefix):
            try:
                yield psutil.Process(pid)
            except psutil.NoSuchProcess:
                continue


def group_members(pgid: int) -> list[psutil.Process]:
    """The live (not zombie) processes of a process group, by a scan of /proc.

    Used only when a group still answers ``kill(0)`` but none of its known members is
    alive: it finds members missed so far, or says that only zombies are left.
    """
    if not killpg(pgid, 0):
        return []
    out = []
    for pid in psutil.pids():
        ids = stat_ids(pid)
        if ids is not None and ids[1] == pgid and ids[0] != "Z":
            try:
                out.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                continue
    return out


def descendants(pid: int) -> list[psutil.Process]:
    """The live descendants of ``pid`` (empty when it is gone)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def send(procs: Iterable[psutil.Process], sig: int) -> int:
    """Signal each process, ignoring the ones already gone; return how many got it."""
    n = 0
    for p in procs:
        try:
            p.send_signal(sig)
            n += 1
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
        except psutil.AccessDenied:
            continue
    return n


def killpg(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def alive(p: psutil.Process, zombie_is_alive: bool = False) -> bool:
    """Whether ``p`` still runs (a zombie counts only with ``zombie_is_alive``)."""
    try:
        if not p.is_running():
            return False
        return zombie_is_alive or p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (not a zombie)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def reap(pid: int) -> bool:
    """``waitpid`` one child of ours without blocking; True when it is gone for good."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not psutil.pid_exists(pid)
    return done == pid


def signal_name(code: int) -> str:
    """``SIGSEGV`` for 11, or ``signal 64`` for one without a name."""
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


def describe_exit(code: int | None) -> str:
    """How a process ended, from its exit code as multiprocess gives it: ``exited with
    code 3``, ``killed by SIGSEGV`` (a negative code), ``ended`` (not known)."""
    if code is None:
        return "ended"
    if code < 0:
        return f"killed by {signal_name(-code)}"
    return f"exited with code {code}"
