"""Whose GPU memory: NVML's process ids read in this process's pid namespace.

NVML names each process that holds memory on a GPU by its pid. On a machine, or in a
container that shares the host's pid namespace, that is the pid every other part of
foldrunner knows. In a container with a pid namespace of its own, many drivers report the
*host's* pids: read as they are, no fold would ever be seen holding GPU memory (a silent
0, and ``max_gpu_memory`` would never fire). So each inventory decides once which of
these holds, and says so (``foldrunner gpus``):

- ``pids match``: this is the host's pid namespace, or a process here that surely holds
  GPU memory (one with an NVIDIA device open, a descendant of this process, or one with
  a fold's marker) was found under the pid NVML gave.
- ``mapped through NSpid``: NVML gives host pids, and the host's ``/proc`` is mounted
  here (``$FOLDRUNNER_HOST_PROC``, else ``/host/proc``): the ``NSpid`` line of
  ``<host proc>/<pid>/status`` lists the process's pid in every namespace down to its
  own, the last one is its pid here, and equal start times prove it is the same process.
- ``per-GPU fallback``: NVML's pids are not this namespace's and cannot be mapped (the
  same pid missing from ``/proc`` in two readings). A fold's GPU memory is then the whole
  GPU's used memory while any process holds memory on it: ``max_gpu_memory`` bounds that,
  and ``peak_gpu_mb`` is its peak while the fold ran.
- ``undecided``: a container's pid namespace, and no process on any GPU yet to tell;
  readings take NVML's pids as they are until one decides.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from enum import Enum
from typing import TYPE_CHECKING

import psutil

from foldrunner.procs.proctree import read_marker

if TYPE_CHECKING:
    from foldrunner.gpu.inventory import GpuInfo, GpuProcess

INIT_PID_NS_INODE = 0xEFFFFFFC
"""The inode of the host's (the initial) pid namespace: ``PROC_PID_INIT_INO`` in Linux."""
HOST_PROC_ENV = "FOLDRUNNER_HOST_PROC"
"""Where the host's ``/proc`` is mounted in a container (default ``/host/proc``)."""
HOST_PROC_DEFAULT = "/host/proc"
SECOND_LOOK = 0.05
"""Seconds before NVML is read again when a pid it gave is missing here: a process may
leave ``/proc`` between NVML's reading and ours, so one miss decides nothing."""
DEVICE_PREFIX = "/dev/nvidia"


class PidMode(str, Enum):
    UNDECIDED = "undecided"
    MATCH = "pids match"
    NSPID = "mapped through NSpid"
    PER_GPU = "per-GPU fallback"

    @property
    def line(self) -> str:
        """What ``foldrunner gpus`` says of it."""
        return _LINES[self]


_LINES = {
    PidMode.MATCH: "per-process memory: pids match (NVML's pids are this pid namespace's)",
    PidMode.NSPID: ("per-process memory: mapped through NSpid (NVML reports host pids; the "
                    "host's /proc maps each to its pid here)"),
    PidMode.PER_GPU: ("per-GPU fallback: NVML reports host pids this container cannot map; "
                      "memory limits apply to the whole GPU's used memory"),
    PidMode.UNDECIDED: ("per-process memory: undecided (this is a container's pid namespace "
                        "and no process on a GPU yet tells whether NVML's pids are its own; "
                        "the first reading that lists one decides)"),
}


def in_host_pid_namespace() -> bool:
    """Whether this process lives in the host's pid namespace (False when unknown)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino == INIT_PID_NS_INODE
    except OSError:
        return False


def host_procs() -> list[str]:
    """The host's ``/proc`` mounts visible here: ``$FOLDRUNNER_HOST_PROC``, ``/host/proc``."""
    out = []
    for root in (os.environ.get(HOST_PROC_ENV), HOST_PROC_DEFAULT):
        if root and os.path.isdir(root) and root not in out:
            out.append(root)
    return out


def nspid(proc: str, pid: int) -> list[int] | None:
    """The ``NSpid`` line of ``<proc>/<pid>/status``: its pid in each namespace, outermost
    first; None when the process is not there."""
    try:
        with open(f"{proc}/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except (OSError, ValueError):
        return None
    return None


def start_ticks(proc: str, pid: int) -> int | None:
    """Field 22 of ``<proc>/<pid>/stat``: its start in clock ticks after boot, the same
    in every namespace."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rfind(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def uses_nvidia(pid: int, prefix: str = DEVICE_PREFIX) -> bool:
    """Whether ``pid`` (here) has an NVIDIA device open (False when it cannot be read)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                return True
        except OSError:
            continue
    return False


def _descends_from_me(pid: int) -> bool:
    try:
        return any(p.pid == os.getpid() for p in psutil.Process(pid).parents())
    except psutil.Error:
        return False


class PidMap:
    """Maps NVML's pids to this namespace's, decided once per inventory (:class:`PidMode`)."""

    def __init__(self, *, host_ns: bool | None = None, host_proc: Sequence[str] | None = None,
                 device_prefix: str = DEVICE_PREFIX) -> None:
        self.host_ns = in_host_pid_namespace() if host_ns is None else host_ns
        self.host_proc = list(host_procs() if host_proc is None else host_proc)
        self.device_prefix = device_prefix
        self.mode = PidMode.MATCH if self.host_ns else PidMode.UNDECIDED
        self.root: str | None = None
        """The host's /proc that maps NVML's pids (mode ``NSPID``)."""
        self._missing: set[int] = set()

    def read(self, raw: Callable[[], list[GpuInfo]]) -> list[GpuInfo]:
        """One reading of the GPUs (``raw``: NVML's, with its pids), in this namespace's pids.
        While undecided, a pid missing here is looked at again after :data:`SECOND_LOOK`."""
        devices = raw()
        if self.mode is PidMode.UNDECIDED:
            self._decide(devices)
            if self.mode is PidMode.UNDECIDED and self._missing:
                time.sleep(SECOND_LOOK)
                devices = raw()
                self._decide(devices)
        return [self._translate(d) for d in devices]

    # -- deciding ----------------------------------------------------------------
    def _decide(self, devices: list[GpuInfo]) -> None:
        pids = sorted({p.pid for d in devices for p in d.processes if p.pid is not None and p.pid > 0})
        if not pids:
            return
        if any(self._ours(pid) for pid in pids):
            self.mode = PidMode.MATCH
            return
        for root in self.host_proc:
            if any(self._via_nspid(root, pid) is not None for pid in pids):
                self.mode, self.root = PidMode.NSPID, root
                return
        missing = {pid for pid in pids if not os.path.exists(f"/proc/{pid}")}
        if missing & self._missing:
            self.mode = PidMode.PER_GPU
        self._missing = missing

    def _ours(self, pid: int) -> bool:
        """A process here under NVML's pid that is surely the one NVML means: one with an
        NVIDIA device open, a descendant of this process (a fold), or a fold's process."""
        return (uses_nvidia(pid, self.device_prefix) or _descends_from_me(pid)
                or read_marker(pid) is not None)

    @staticmethod
    def _via_nspid(root: str, pid: int) -> int | None:
        """The pid here of host pid ``pid``, through the host's /proc at ``root``."""
        ns = nspid(root, pid)
        if not ns or len(ns) < 2:
            return None
        here = ns[-1]
        t = start_ticks(root, pid)
        return here if t is not None and t == start_ticks("/proc", here) else None

    # -- mapping -----------------------------------------------------------------
    def _translate(self, d: GpuInfo) -> GpuInfo:
        return replace(d, pid_mode=self.mode, processes=tuple(self._map(p) for p in d.processes))

    def _map(self, p: GpuProcess) -> GpuProcess:
        if self.mode in (PidMode.MATCH, PidMode.UNDECIDED) or p.pid is None:
            return p
        if self.mode is PidMode.NSPID and self.root is not None:
            return replace(p, pid=self._via_nspid(self.root, p.pid), reported=p.pid)
        return replace(p, pid=None, reported=p.pid)
