"""GPU memory of a fold: the memory its processes hold on its GPU, from NVML readings
shared by every running fold. (Host memory is :mod:`foldrunner.procs.memory`.)

Where NVML's pids cannot be mapped to this namespace's (a container: ``per-GPU
fallback`` in :mod:`foldrunner.gpu.pids`), a fold's GPU memory is its whole GPU's used
memory while any process holds memory there: ``max_gpu_memory`` then bounds the GPU's
used memory (with ``per_gpu`` above 1, every fold on a GPU over it ends as ``memory``),
and ``peak_gpu_mb`` is the GPU's peak while the fold ran."""

from __future__ import annotations

from collections.abc import Callable

from foldrunner.procs import proctree
from foldrunner.gpu.inventory import GpuInfo, Inventory, NoGpus
from foldrunner.gpu.pids import PidMode

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
        self.mode: PidMode | None = None
        """How the last reading mapped NVML's pids (told in a note when it is decided)."""

    def refresh(self, now: float, max_age: float = GPU_SAMPLE_INTERVAL) -> dict[int, GpuInfo]:
        if self.inventory is None or self.broken is not None:
            return {}
        if now - self.taken_at >= max_age:
            try:
                self.snapshot = {d.index: d for d in self.inventory.devices()}
                self._note_mode()
            except NoGpus as exc:
                self.broken = str(exc)
                self.snapshot = {}
                if self.notes is not None:
                    self.notes(f"GPU memory of folds is not watched: {exc}")
            self.taken_at = now
        return self.snapshot

    def _note_mode(self) -> None:
        mode = next(iter(self.snapshot.values())).pid_mode if self.snapshot else None
        if mode is None or mode is self.mode:
            return
        self.mode = mode
        if self.notes is None or mode in (PidMode.MATCH, PidMode.UNDECIDED):
            return
        if mode is PidMode.PER_GPU:
            self.notes(f"GPU memory of folds: {mode.line}: max_gpu_memory and peak_gpu_mb count"
                       " the whole GPU's used memory while any process holds memory on it")
        else:
            self.notes(f"GPU memory of folds: {mode.line}")

    def fold_usage(self, gpu: int, marker: str, pids: set[int]) -> tuple[int, list[int]]:
        """``(bytes, pids)`` that a fold's processes hold on ``gpu`` in the last reading.

        A process is the fold's when its pid is in ``pids`` (its known tree) or when it
        carries the fold's marker in its environment. In the per-GPU fallback the bytes
        are the GPU's used memory while NVML lists any process on it, and the pids are
        those of ``pids`` still alive then (the fold's processes that may hold it).
        """
        info = self.snapshot.get(gpu)
        if info is None:
            return 0, []
        if info.pid_mode is PidMode.PER_GPU:
            if not info.processes:
                return 0, []
            return info.used_bytes, sorted(pid for pid in pids if proctree.pid_alive(pid))
        used, mine = 0, []
        for p in info.processes:
            if p.pid is None:
                continue
            if p.pid in pids or proctree.read_marker(p.pid) == marker:
                used += p.used_bytes or 0
                mine.append(p.pid)
        return used, mine

    def holders(self, gpu: int, marker: str, pids: set[int]) -> list[int]:
        """The fold's processes that hold memory on ``gpu`` in the last reading (a slot's
        drain waits for them). In the per-GPU fallback, while NVML lists any process on
        the GPU: the fold's processes still alive here, those of ``pids`` and those that
        carry its marker (a scan of /proc)."""
        _, mine = self.fold_usage(gpu, marker, pids)
        info = self.snapshot.get(gpu)
        if info is None or info.pid_mode is not PidMode.PER_GPU or not info.processes:
            return mine
        marked = {p.pid for p in proctree.marked_processes(marker)
                  if proctree.read_marker(p.pid) == marker and proctree.pid_alive(p.pid)}
        return sorted(set(mine) | marked)
