"""A fake GPU inventory at the NVML boundary, for machines without a GPU.

It answers :class:`foldrunner.gpu.inventory.Inventory` like NVML would: each GPU's memory and the
processes holding memory on it. A process "holds GPU memory" while it is alive and a
file ``<root>/<gpu>/<pid>`` (holding the bytes) exists, written by the test's folds; it
may hold ``<root>/dev/nvidia<gpu>`` open, as a real one holds ``/dev/nvidia<gpu>``.

``pids`` says which pid namespace the fake NVML and this process live in, as a driver
in a container would report them (the mapping itself is foldrunner's, unfaked):

- ``host-ns``: this is the host's pid namespace; NVML's pids are ours.
- ``container``: a container whose driver reports the container's own pids.
- ``host``: a container whose driver reports host pids (ours + :data:`HOST_PID_OFFSET`,
  which exist nowhere here), with no host ``/proc`` to map them: the per-GPU fallback.
- ``nspid``: the same host pids, with the host's ``/proc`` mounted at ``<root>/hostproc``
  (``<pid>/status`` with its ``NSpid`` line, ``<pid>/stat`` with its start time).
"""

from __future__ import annotations

from pathlib import Path

import psutil

from foldrunner.gpu.inventory import GpuInfo, GpuProcess, NoGpus
from foldrunner.gpu.pids import PidMap

GiB = 1024**3
HOST_PID_OFFSET = 10_000_000
"""Above Linux's largest pid (4194304): a fake host pid is never a pid here."""
MODES = ("host-ns", "container", "host", "nspid")


class FakeInventory:
    def __init__(self, root: Path, free: dict[int, int], total: int = 16 * GiB,
                 pids: str = "host-ns") -> None:
        assert pids in MODES, pids
        self.root, self.free, self.total, self.kind = root, free, total, pids
        self.calls = 0
        for gpu in free:
            (root / str(gpu)).mkdir(parents=True, exist_ok=True)
        self.hostproc = root / "hostproc"
        if pids == "nspid":
            self.hostproc.mkdir(parents=True, exist_ok=True)
        (root / "dev").mkdir(parents=True, exist_ok=True)
        self.pids = PidMap(host_ns=pids == "host-ns",
                           host_proc=[str(self.hostproc)] if pids == "nspid" else [],
                           device_prefix=device_prefix(root))

    def devices(self) -> list[GpuInfo]:
        return self.pids.read(self._raw)

    def _raw(self) -> list[GpuInfo]:
        """What NVML itself would say: every GPU with its processes, by NVML's pids."""
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
                procs.append(GpuProcess(self._nvml_pid(pid), int(f.read_text() or 0)))
            used = sum(p.used_bytes or 0 for p in procs)
            out.append(GpuInfo(gpu, "Fake GPU", f"GPU-fake-{gpu}", self.total, free - used,
                               self.total - free + used, 0, tuple(procs)))
        return out

    def _nvml_pid(self, pid: int) -> int:
        if self.kind in ("host-ns", "container"):
            return pid
        host = pid + HOST_PID_OFFSET
        if self.kind == "nspid":
            d = self.hostproc / str(host)
            d.mkdir(exist_ok=True)
            (d / "status").write_text(f"Name:\tfake\nNSpid:\t{host}\t{pid}\n")
            try:
                stat = Path(f"/proc/{pid}/stat").read_bytes()
            except OSError:
                stat = b""
            (d / "stat").write_bytes(stat)
        return host


def device_prefix(root: str | Path) -> str:
    """The fake's NVIDIA device files: a process that holds ``<prefix><gpu>`` open is seen
    as a GPU user, as one holding ``/dev/nvidia<gpu>`` is on a real machine."""
    return str(Path(root) / "dev" / "nvidia")


class NoNvml:
    def devices(self) -> list[GpuInfo]:
        raise NoGpus("NVML is not available: fake (no driver)")


def hold(root: str | Path, gpu: int, pid: int, used: int) -> None:
    """Called by folds: ``pid`` now holds ``used`` bytes on fake GPU ``gpu``."""
    p = Path(root) / str(gpu) / str(pid)
    p.write_text(str(used))
