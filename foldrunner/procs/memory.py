"""Host memory of a fold: its process tree's PSS, and whether the kernel's OOM killer struck.

Host memory is the sum of each process's PSS (proportional set size): pages shared by
the fold's processes (a forked data loader, shared libraries) are counted once, where
summing RSS would count them once per process. Where PSS cannot be read, RSS is used.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import psutil


def tree_memory(procs: Iterable[psutil.Process]) -> int:
    """Bytes of host memory used by ``procs``: the sum of their PSS (RSS as a fallback)."""
    total = 0
    for p in procs:
        try:
            total += _pss(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    return total


def _pss(p: psutil.Process) -> int:
    try:
        with open(f"/proc/{p.pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        raise psutil.NoSuchProcess(p.pid) from None
    except PermissionError:
        pass
    return int(p.memory_info().rss)


VMSTAT = Path("/proc/vmstat")
"""Made once: a ``Path`` made per read (one read per attempt) interns its parts anew
each time (pathlib, before Python 3.14), a new entry of the interpreter's table of
interned strings per fold that only grows that table (see
:func:`foldrunner.store.paths.child_path`)."""


class OomCounter:
    """The kernel's count of OOM kills: system-wide and, where readable, this cgroup's."""

    def __init__(self) -> None:
        self.cgroup_events = _cgroup_memory_events()

    def read(self) -> int:
        total = _read_counter(VMSTAT, b"oom_kill ")
        if self.cgroup_events is not None:
            total += _read_counter(self.cgroup_events, b"oom_kill ")
        return total


def _read_counter(path: Path, key: bytes) -> int:
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_memory_events() -> Path | None:
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            p = Path("/sys/fs/cgroup") / line[3:].lstrip("/") / "memory.events"
            return p if p.exists() else None
    return None
