"""Memory of a fold: its process tree on the host (PSS), its processes on the GPU (NVML),
and whether the kernel's OOM killer struck.

Host memory is the sum of each process's PSS (proportional set size): pages shared by
the fold's processes (a forked data loader, shared libraries) are counted once, where
summing RSS would count them once per process. Where PSS cannot be read, RSS is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

from foldrunner.procs import proctree
from foldrunner.gpu.inventory import GpuInfo, Inventory, NoGpus

GPU_SAMPLE_INTERVAL = 1.0
"""Seconds between two NVML readings of the GPUs' processes while folds run on them."""


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


class GpuWatch:
    """NVML readings shared by every running fold, refreshed at most once a second."""

    def __init__(self, inventory: Inventory | None,
                 notes: Callable[[str], None] | None = None) -> None:
        self.inventory = inventory
        self.notes = notes
        self.snapshot: dict[int, GpuInfo] = {}
        self.taken_at = -1e9
        self.broken: str | None = None

    def refresh(self, now: float, max_age: float = GPU_SAMPLE_INTERVAL) -> dict[int, GpuInfo]:
        if self.inventory is None or self.broken is not None:
            return {}
        if now - self.taken_at >= max_age:
            try:
                self.snapshot = {d.index: d for d in self.inventory.devices()}
            except NoGpus as exc:
                self.broken = str(exc)
                self.snapshot = {}
                if self.notes is not None:
                    self.notes(f"GPU memory of folds is not watched: {exc}")
            self.taken_at = now
        return self.snapshot

    def fold_usage(self, gpu: int, marker: str, pids: set[int]) -> tuple[int, list[int]]:
        """``(bytes, pids)`` that a fold's processes hold on ``gpu`` in the last reading.

        A process is the fold's when its pid is in ``pids`` (its known tree) or when it
        carries the fold's marker in its environment.
        """
        info = self.snapshot.get(gpu)
        if info is None:
            return 0, []
        used, mine = 0, []
        for p in info.processes:
            if p.pid in pids or proctree.read_marker(p.pid) == marker:
                used += p.used_bytes or 0
                mine.append(p.pid)
        return used, mine


class OomCounter:
    """The kernel's count of OOM kills: system-wide and, where readable, this cgroup's."""

    def __init__(self) -> None:
        self.cgroup_events = _cgroup_memory_events()

    def read(self) -> int:
        total = _read_counter(Path("/proc/vmstat"), b"oom_kill ")
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
