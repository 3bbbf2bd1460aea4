"""GPU memory of a fold: the memory its processes hold on its GPU, from NVML readings
shared by every running fold. (Host memory is :mod:`foldrunner.procs.memory`.)"""

from __future__ import annotations

from collections.abc import Callable

from foldrunner.procs import proctree
from foldrunner.gpu.inventory import GpuInfo, Inventory, NoGpus

GPU_SAMPLE_INTERVAL = 1.0
"""Seconds between two NVML readings of the GPUs' processes while folds run on them."""


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
