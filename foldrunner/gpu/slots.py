"""The health of GPU slots: a GPU that keeps failing folds leaves the rotation, and a
GPU slot is used again only once its last fold holds no GPU memory any more."""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil

from foldrunner.procs import proctree
from foldrunner.gpu.inventory import Drain, Slot
from foldrunner.wire.outcome import Status
from foldrunner.defaults import Timing
from foldrunner.procs.terminate import Terminator
from foldrunner.gpu.watch import GpuWatch

GPU_FAILURES_IN_A_ROW = 3
"""A GPU on which this many folds in a row failed is taken out of the rotation."""
DRAIN_POLL = 0.1
"""Seconds between two NVML readings while a slot waits for its last fold's processes."""


class GpuSlots:
    """Watches every GPU slot's folds as they end."""

    def __init__(self, slots: list[Slot], watch: GpuWatch, notes: Callable[[str], None],
                 grace: float, terminator: Terminator) -> None:
        self.slots, self.watch, self.notes, self.grace = slots, watch, notes, grace
        self.term = terminator
        self.failures: dict[int, int] = {}

    def fold_ended(self, slot: Slot, status: Status, fold_id: str, marker: str,
                   pids: set[int]) -> None:
        self._count(slot, status)
        self._start_drain(slot, fold_id, marker, pids)

    @property
    def draining(self) -> bool:
        return any(sl.drain for sl in self.slots)

    def _count(self, slot: Slot, status: Status) -> None:
        """Take a GPU out of the rotation after it failed folds three times in a row."""
        if slot.gpu is None or status in (Status.CANCELLED, Status.PRUNED):
            return
        if status is Status.OK:
            self.failures[slot.gpu] = 0
            return
        n = self.failures.get(slot.gpu, 0) + 1
        self.failures[slot.gpu] = n
        if n >= GPU_FAILURES_IN_A_ROW and not slot.out:
            for sl in self.slots:
                if sl.gpu == slot.gpu:
                    sl.out = True
            left = sorted({sl.gpu for sl in self.slots if not sl.out and sl.gpu is not None})
            self.notes(
                f"GPU {slot.gpu} taken out of the rotation: {n} folds in a row failed on it"
                f" (last: {status.value}); GPUs left: {left or 'none'}"
            )

    def _start_drain(self, slot: Slot, fold_id: str, marker: str, pids: set[int]) -> None:
        """Keep a GPU slot until no process of its last fold holds GPU memory."""
        if slot.gpu is None or self.watch.inventory is None or self.watch.broken:
            return
        now = time.monotonic()
        slot.drain = Drain(
            fold_id=fold_id, marker=marker, pids=pids, kill_at=now + self.grace,
            give_up_at=now + self.grace + Timing.REAP_WAIT, killed=[],
        )

    def check_drains(self, now: float) -> None:
        """Free the slots whose last fold left nothing on the GPU; kill what stays."""
        for slot in self.slots:
            d = slot.drain
            if d is None or slot.gpu is None:
                continue
            self.watch.refresh(now, max_age=DRAIN_POLL if d.read else 0.0)
            d.read = True
            holders = self.watch.holders(slot.gpu, d.marker, d.pids)
            holders = [pid for pid in holders if pid not in d.killed or proctree.pid_alive(pid)]
            if holders and not d.reported:
                d.reported = True
                self.notes(
                    f"fold {d.fold_id} left {len(holders)} process(es) holding memory on GPU "
                    f"{slot.gpu} ({holders}); the slot waits until they are gone"
                )
            if not holders:
                slot.drain = None
            elif now >= d.give_up_at:
                self.notes(
                    f"GPU {slot.gpu}: processes {holders} of fold {d.fold_id} still hold GPU memory "
                    f"after SIGKILL; the slot is used again anyway"
                )
                slot.drain = None
            elif now >= d.kill_at and not d.killed:
                procs = []
                for pid in holders:
                    try:
                        procs.append(psutil.Process(pid))
                    except psutil.NoSuchProcess:
                        continue
                # its fold's own grace is over: the one termination path, at once
                self.term.end(("gpu", slot.index, d.fold_id), procs=procs, grace=0.0, now=now,
                              label=f"GPU {slot.gpu} holders of fold {d.fold_id}")
                d.killed = holders
                self.notes(f"GPU {slot.gpu}: killed {holders} of fold {d.fold_id} with SIGKILL")
