"""A fake GPU inventory at the NVML boundary, for machines without a GPU.

It answers :class:`foldrunner.gpu.inventory.Inventory` like NVML would: each GPU's memory and the
processes holding memory on it. A process "holds GPU memory" while it is alive and a
file ``<root>/<gpu>/<pid>`` (holding the bytes) exists, written by the test's folds.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from foldrunner.gpu.inventory import GpuInfo, GpuProcess, NoGpus

GiB = 1024**3


class FakeInventory:
    def __init__(self, root: Path, free: dict[int, int], total: int = 16 * GiB) -> None:
        self.root, self.free, self.total = root, free, total
        self.calls = 0
        for gpu in free:
            (root / str(gpu)).mkdir(parents=True, exist_ok=True)

    def devices(self) -> list[GpuInfo]:
        self.calls += 1
        out = []
        for gpu, free in sorted(self.free.items()):
            procs = []
            for f in (self.root / str(gpu)).iterdir():
                pid = int(f.name)
                try:
                    if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                        continue
                except psutil.NoSuchProcess:
                    continue
                procs.append(GpuProcess(pid, int(f.read_text() or 0)))
            used = sum(p.used_bytes or 0 for p in procs)
            out.append(GpuInfo(gpu, "Fake GPU", f"GPU-fake-{gpu}", self.total, free - used,
                               self.total - free + used, 0, tuple(procs)))
        return out


class NoNvml:
    def devices(self) -> list[GpuInfo]:
        raise NoGpus("NVML is not available: fake (no driver)")


def hold(root: str | Path, gpu: int, pid: int, used: int) -> None:
    """Called by folds: ``pid`` now holds ``used`` bytes on fake GPU ``gpu``."""
    p = Path(root) / str(gpu) / str(pid)
    p.write_text(str(used))
