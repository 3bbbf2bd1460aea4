"""GPU slots on their own (``foldrunner.gpu.slots.GpuSlots``): a GPU that keeps failing
leaves the rotation, and a slot is used again only once its last fold's processes hold
no GPU memory. Real processes hold memory on the fake NVML inventory of ``fakegpu``."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time

import pytest

from fakegpu import GiB, FakeInventory, NoNvml, hold
from foldrunner.child.task import MARKER_ENV
from foldrunner.gpu.inventory import Slot
from foldrunner.gpu.slots import DRAIN_POLL, GPU_FAILURES_IN_A_ROW, GpuSlots
from foldrunner.gpu.watch import GpuWatch
from foldrunner.procs import proctree
from foldrunner.procs.terminate import Terminator
from foldrunner.wire.outcome import Status

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
SLEEP = "import time; time.sleep(600)"
MARKER = "run/t0-r0-f0/1"


@pytest.fixture
def procs():
    """Start sleeping processes (with a marker when given); all are killed afterwards."""
    started: list[subprocess.Popen] = []

    def start(marker: str | None = None) -> subprocess.Popen:
        env = dict(os.environ)
        env.pop(MARKER_ENV, None)
        if marker is not None:
            env[MARKER_ENV] = marker
        p = subprocess.Popen([sys.executable, "-c", SLEEP], env=env)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()
        p.wait(10)


def later(seconds: float = DRAIN_POLL * 1.5) -> float:
    """A moment past the watch's refresh interval (a drain reads NVML at most that often)."""
    time.sleep(seconds)
    return time.monotonic()


def test_a_gpu_that_keeps_failing_leaves_the_rotation():
    slots = [Slot(0, gpu=0), Slot(1, gpu=1), Slot(2, gpu=0)]
    notes: list[str] = []
    gs = GpuSlots(slots, GpuWatch(None), notes.append, grace=1.0, terminator=Terminator(strays=False))
    # a success resets the count; a cancelled fold is not the GPU's fault
    for status in (Status.CRASHED, Status.TIMEOUT, Status.OK, Status.CRASHED, Status.MEMORY,
                   Status.CANCELLED):
        gs.fold_ended(slots[0], status, "f", "m", set())
    assert not any(s.out for s in slots) and notes == []
    assert GPU_FAILURES_IN_A_ROW == 3
    gs.fold_ended(slots[2], Status.ERROR, "f", "m", set())  # the third in a row on GPU 0
    assert [s.out for s in slots] == [True, False, True]  # every slot of GPU 0, only them
    assert not slots[0].free and slots[1].free
    assert notes == ["GPU 0 taken out of the rotation: 3 folds in a row failed on it "
                     "(last: error); GPUs left: [1]"]
    gs.fold_ended(slots[0], Status.ERROR, "f", "m", set())
    assert len(notes) == 1  # said once
    assert not gs.draining  # no inventory: nothing to wait for


def test_a_cpu_slot_is_never_counted_nor_drained(tmp_path):
    slot = Slot(0, gpu=None)
    gs = GpuSlots([slot], GpuWatch(FakeInventory(tmp_path / "gpu", {0: 8 * GiB})), print,
                  grace=1.0, terminator=Terminator(strays=False))
    for _ in range(5):
        gs.fold_ended(slot, Status.CRASHED, "f", "m", set())
    assert not slot.out and slot.drain is None and slot.free


def test_without_nvml_a_slot_is_free_at_once():
    slot = Slot(0, gpu=0)
    notes: list[str] = []
    watch = GpuWatch(NoNvml(), notes.append)
    assert watch.refresh(time.monotonic()) == {} and watch.broken
    gs = GpuSlots([slot], watch, notes.append, grace=1.0, terminator=Terminator(strays=False))
    gs.fold_ended(slot, Status.OK, "f", "m", set())
    assert slot.drain is None and slot.free
    assert notes == ["GPU memory of folds is not watched: NVML is not available: fake (no driver)"]


def test_the_slot_waits_for_its_folds_gpu_processes_and_only_those(tmp_path, procs):
    inv = FakeInventory(tmp_path / "gpu", {0: 8 * GiB})
    slot = Slot(0, gpu=0)
    notes: list[str] = []
    gs = GpuSlots([slot], GpuWatch(inv), notes.append, grace=30.0,
                  terminator=Terminator(strays=False))
    by_marker = procs(MARKER)  # a descendant that carries the fold's marker
    by_pid = procs()  # a member of the fold's known tree
    other = procs("run/t1-r0-f0/1")  # another fold's, on the same GPU
    for p in (by_marker, by_pid, other):
        hold(inv.root, 0, p.pid, 100 * MiB)
    gs.fold_ended(slot, Status.OK, "t0-r0-f0", MARKER, {by_pid.pid})
    assert slot.drain is not None and not slot.free and gs.draining
    gs.check_drains(later())
    assert slot.drain is not None
    (note,) = notes
    assert note.startswith("fold t0-r0-f0 left 2 process(es) holding memory on GPU 0 (")
    assert note.endswith("); the slot waits until they are gone")
    held = ast.literal_eval(note[note.index("GPU 0 (") + 7 : note.index(");")])
    assert sorted(held) == sorted([by_marker.pid, by_pid.pid])  # not the other fold's
    by_marker.kill()
    by_marker.wait(10)
    gs.check_drains(later())
    assert slot.drain is not None  # one of them still holds memory
    by_pid.kill()
    by_pid.wait(10)
    gs.check_drains(later())
    assert slot.drain is None and slot.free and not gs.draining  # the other fold's is not ours
    assert len(notes) == 1 and proctree.pid_alive(other.pid)


def test_a_holder_past_the_grace_is_killed_and_the_slot_comes_back(tmp_path, procs):
    inv = FakeInventory(tmp_path / "gpu", {0: 8 * GiB})
    slot = Slot(0, gpu=0)
    notes: list[str] = []
    term = Terminator(strays=False)
    gs = GpuSlots([slot], GpuWatch(inv), notes.append, grace=0.3, terminator=term)
    holder = procs(MARKER)
    hold(inv.root, 0, holder.pid, 100 * MiB)
    t0 = time.monotonic()
    gs.fold_ended(slot, Status.OK, "t0-r0-f0", MARKER, set())
    gs.check_drains(t0)
    assert slot.drain is not None and not slot.drain.killed  # within its grace: waits
    gs.check_drains(later(0.35))
    assert slot.drain is not None and slot.drain.killed == [holder.pid]
    assert ("gpu", 0, "t0-r0-f0") in term  # through the one termination path
    assert notes[-1] == f"GPU 0: killed [{holder.pid}] of fold t0-r0-f0 with SIGKILL"
    assert term.wait(time.monotonic() + 5)
    assert not proctree.pid_alive(holder.pid)
    gs.check_drains(later())
    assert slot.drain is None and slot.free
