"""GPUs: an inventory read through NVML, and the slots folds run in.

Every NVML call is behind :class:`Inventory`; tests on machines without a GPU give a
fake inventory at that boundary and nowhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from foldrunner.errors import FoldrunnerError
from foldrunner.gpu.pids import PidMap, PidMode


MiB = 1024 * 1024


@dataclass
class Drain:
    """A GPU slot whose fold has ended, waiting for the fold's GPU processes to be gone."""

    fold_id: str
    marker: str
    pids: set[int]
    kill_at: float
    give_up_at: float
    killed: list[int]
    reported: bool = False
    read: bool = False
    """Whether NVML was read since the fold ended (the first check of a drain reads it
    afresh: a reading taken while the fold ran may predate what it left behind)."""


@dataclass
class Slot:
    """A place for one fold at a time, on one GPU or none."""

    index: int
    gpu: int | None = None
    busy: bool = False
    out: bool = False
    """Taken out of the rotation (its GPU kept failing folds)."""
    drain: Drain | None = None
    """Set while the slot waits for its last fold's GPU processes to be gone."""

    @property
    def free(self) -> bool:
        return not (self.busy or self.out or self.drain is not None)


@dataclass(frozen=True)
class GpuProcess:
    pid: int | None
    """Its pid in this pid namespace; None when NVML's pid cannot be mapped here
    (:mod:`foldrunner.gpu.pids`)."""
    used_bytes: int | None
    reported: int | None = None
    """The pid NVML reported, where it is not ``pid`` (a host pid, seen from a container)."""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    uuid: str
    total_bytes: int
    free_bytes: int
    used_bytes: int
    utilization: int | None = None
    processes: tuple[GpuProcess, ...] = field(default_factory=tuple)
    pid_mode: PidMode = PidMode.MATCH
    """How ``processes`` were mapped to this namespace's pids (:mod:`foldrunner.gpu.pids`)."""


class Inventory(Protocol):
    """What foldrunner asks of the GPUs."""

    def devices(self) -> list[GpuInfo]:
        """Every GPU with its memory and processes (their pids in this namespace, each
        reading stamped with its :class:`PidMode`); raises :class:`NoGpus` without NVML."""
        ...


class NoGpus(FoldrunnerError):
    """NVML or its driver is missing, or it sees no GPU: the message says which."""


class NvmlInventory:
    """The real inventory, through ``nvidia-ml-py`` (``pynvml``). NVML is initialised once,
    on first use, and shut down by :meth:`close`."""

    def __init__(self, pids: PidMap | None = None) -> None:
        self._nv: Any = None
        self.pids = pids or PidMap()
        """NVML's pids in this pid namespace: the mode is decided once, here."""

    def _init(self) -> Any:
        if self._nv is not None:
            return self._nv
        try:
            import pynvml as nv
        except ImportError as exc:  # pragma: no cover - a dependency
            raise NoGpus(f"nvidia-ml-py is not installed ({exc})") from None
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            raise NoGpus(f"NVML is not available: {exc} (no NVIDIA driver on this machine?)") from None
        self._nv = nv
        return nv

    def close(self) -> None:
        if self._nv is not None:
            try:
                self._nv.nvmlShutdown()
            except self._nv.NVMLError:
                pass
            self._nv = None

    def devices(self) -> list[GpuInfo]:
        nv = self._init()

        def raw() -> list[GpuInfo]:
            return [self._device(nv, i) for i in range(nv.nvmlDeviceGetCount())]

        try:
            return self.pids.read(raw)
        except nv.NVMLError as exc:
            raise NoGpus(f"NVML failed: {exc}") from None

    @staticmethod
    def _device(nv: Any, i: int) -> GpuInfo:
        h = nv.nvmlDeviceGetHandleByIndex(i)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        try:
            util: int | None = int(nv.nvmlDeviceGetUtilizationRates(h).gpu)
        except nv.NVMLError:
            util = None
        procs: dict[int, GpuProcess] = {}
        for getter in (nv.nvmlDeviceGetComputeRunningProcesses, nv.nvmlDeviceGetGraphicsRunningProcesses):
            try:
                for p in getter(h):
                    used = getattr(p, "usedGpuMemory", None)
                    procs[int(p.pid)] = GpuProcess(int(p.pid), None if used is None else int(used))
            except nv.NVMLError:
                continue
        return GpuInfo(
            index=i, name=_text(nv.nvmlDeviceGetName(h)), uuid=_text(nv.nvmlDeviceGetUUID(h)),
            total_bytes=int(mem.total), free_bytes=int(mem.free), used_bytes=int(mem.used),
            utilization=util, processes=tuple(procs.values()),
        )


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def make_slots(
    gpus: str | list[int],
    *,
    per_gpu: int = 1,
    workers: int | None = None,
    min_free_memory: int = 0,
    inventory: Inventory | None = None,
) -> tuple[list[Slot], list[str]]:
    """The slots of a run and notes for the user (why a GPU was skipped, none found...).

    ``gpus`` is ``"none"``, ``"auto"`` or a list of physical indices. With GPUs there are
    ``per_gpu`` slots per GPU; without, ``workers`` slots (default: the CPU count).
    """
    notes: list[str] = []
    chosen: list[int] = []
    if gpus == "auto":
        try:
            devices = (inventory or NvmlInventory()).devices()
        except NoGpus as exc:
            devices = []
            notes.append(f"no GPU: {exc}; folds run on the CPU")
        else:
            if not devices:
                notes.append("no GPU: NVML sees none; folds run on the CPU")
        for d in devices:
            if d.free_bytes >= min_free_memory:
                chosen.append(d.index)
            else:
                notes.append(
                    f"GPU {d.index} skipped: {d.free_bytes / MiB:.0f} MiB free,"
                    f" less than min_free_memory {min_free_memory / MiB:.0f} MiB"
                )
        if devices and not chosen:
            notes.append("no GPU has enough free memory; folds run on the CPU")
    elif not isinstance(gpus, str):
        chosen = list(gpus)
    if chosen:
        slots = [Slot(i * per_gpu + k, gpu) for i, gpu in enumerate(chosen) for k in range(per_gpu)]
        # interleave so that consecutive launches go to different GPUs
        slots.sort(key=lambda s: (s.index % per_gpu, s.index // per_gpu))
        if workers is not None:
            slots = slots[:workers]
        for i, s in enumerate(slots):
            s.index = i
        return slots, notes
    n = workers if workers is not None else cpu_count()
    return [Slot(i, None) for i in range(max(1, n))], notes


def describe(devices: list[GpuInfo]) -> list[str]:
    """Lines for ``foldrunner gpus``: each GPU, its memory, and its processes, with
    foldrunner's folds marked (fold, attempt, run) by the marker in their environment.
    A pid NVML gave that is not this namespace's is shown as the host's."""
    from foldrunner.procs.proctree import read_marker

    lines = []
    for d in devices:
        util = "?" if d.utilization is None else f"{d.utilization}%"
        lines.append(
            f"GPU {d.index}: {d.name}  {d.free_bytes // MiB} MiB free of {d.total_bytes // MiB} MiB"
            f"  util {util}  {len(d.processes)} process(es)"
        )
        for p in d.processes:
            used = "?" if p.used_bytes is None else f"{p.used_bytes // MiB} MiB"
            if p.pid is None:
                lines.append(f"    host pid {p.reported}: {used}  (not mapped into this container)")
                continue
            marker = read_marker(p.pid)
            whose = ""
            if marker:
                run_id, _, rest = marker.partition("/")
                fold, _, attempt = rest.partition("/")
                whose = f"  foldrunner {fold} attempt {attempt} (run {run_id})"
            host = "" if p.reported is None else f" (host pid {p.reported})"
            lines.append(f"    pid {p.pid}{host}: {used}{whose}")
    return lines


def listing(inventory: Inventory) -> list[str]:
    """What ``foldrunner gpus`` prints: every GPU (:func:`describe`), then how GPU memory is
    read per process (:class:`PidMode`); ``["No GPUs: ..."]`` when there are none."""
    try:
        devices = inventory.devices()
    except NoGpus as exc:
        return [f"No GPUs: {exc}."]
    if not devices:
        return ["No GPUs: NVML sees none."]
    return [*describe(devices), devices[0].pid_mode.line]
