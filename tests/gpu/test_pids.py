"""NVML's pids in this pid namespace (``foldrunner.gpu.pids``): each mode decided once per
inventory and said by ``foldrunner gpus``; the GPU memory kill, ``peak_gpu_mb`` and a
slot's drain in the per-GPU fallback and through NSpid. The fake NVML of ``fakegpu``
reports pids as a driver in a container would; the mapping is foldrunner's own."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import foldrunner
from conftest import base_spec
from fakegpu import HOST_PID_OFFSET, GiB, FakeInventory, device_prefix, hold
from foldrunner.gpu.inventory import GpuInfo, GpuProcess, listing
from foldrunner.gpu.pids import PidMap, PidMode, start_ticks, uses_nvidia

pytestmark = pytest.mark.timeout(90)

MiB = 1024 * 1024
SLEEP = "import time; time.sleep(600)"


@pytest.fixture
def sleeper():
    """Start sleeping processes (optionally holding a file open); all killed afterwards."""
    started: list[subprocess.Popen] = []

    def start(hold_open: str | None = None) -> subprocess.Popen:
        code = SLEEP if hold_open is None else f"f = open({hold_open!r}, 'a'); print(1, flush=True); {SLEEP}"
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        started.append(p)
        if hold_open is not None:
            assert p.stdout is not None and p.stdout.readline() == b"1\n"
        return p

    yield start
    for p in started:
        p.kill()
        p.wait(10)


@pytest.mark.parametrize("kind, mode", [
    ("host-ns", PidMode.MATCH), ("container", PidMode.MATCH), ("nspid", PidMode.NSPID),
    ("host", PidMode.PER_GPU),
])
def test_the_mode_is_decided_once_and_said(tmp_path, sleeper, kind, mode):
    inv = FakeInventory(tmp_path / "gpu", {0: 16 * GiB, 1: 16 * GiB}, pids=kind)
    first = PidMode.MATCH if kind == "host-ns" else PidMode.UNDECIDED
    assert listing(inv)[-1] == first.line  # no process on a GPU yet
    p = sleeper()
    hold(tmp_path / "gpu", 0, p.pid, 300 * MiB)
    calls = inv.calls
    lines = listing(inv)
    assert lines[-1] == mode.line
    assert lines[0] == "GPU 0: Fake GPU  16084 MiB free of 16384 MiB  util 0%  1 process(es)"
    host = p.pid + HOST_PID_OFFSET
    assert lines[1] == {
        PidMode.MATCH: f"    pid {p.pid}: 300 MiB",
        PidMode.NSPID: f"    pid {p.pid} (host pid {host}): 300 MiB",
        PidMode.PER_GPU: f"    host pid {host}: 300 MiB  (not mapped into this container)",
    }[mode]
    # a pid missing here is looked at twice before the fallback is decided
    assert inv.calls - calls == (2 if mode is PidMode.PER_GPU else 1)
    p.kill()
    p.wait()
    assert listing(inv)[-1] == mode.line  # decided once: it stays


def _reading(*pids: int) -> list[GpuInfo]:
    return [GpuInfo(0, "Fake GPU", "GPU-x", 16 * GiB, 15 * GiB, GiB, 0,
                    tuple(GpuProcess(pid, 100 * MiB) for pid in pids))]


def test_a_pid_missing_in_one_reading_only_decides_nothing():
    gone = HOST_PID_OFFSET + 1
    readings = iter([_reading(gone), _reading()])
    pm = PidMap(host_ns=False, host_proc=[])
    devices = pm.read(lambda: next(readings))
    assert pm.mode is PidMode.UNDECIDED and devices[0].processes == ()
    # the same pid missing in two readings: NVML's pids are not this namespace's
    devices = pm.read(lambda: _reading(gone))
    assert pm.mode is PidMode.PER_GPU
    assert devices[0].processes == (GpuProcess(None, 100 * MiB, reported=gone),)
    assert devices[0].pid_mode is PidMode.PER_GPU


def test_a_process_here_that_is_not_provably_ours_decides_nothing():
    pm = PidMap(host_ns=False, host_proc=[])
    devices = pm.read(lambda: _reading(1))  # init: here, but no GPU device, marker or parent of ours
    assert pm.mode is PidMode.UNDECIDED
    assert devices[0].processes == (GpuProcess(1, 100 * MiB),)


def orphan(hold_open: str | None = None) -> int:
    """A sleeping process that is not our descendant (its parent exited): only its open
    files can tell it is a GPU user."""
    code = SLEEP if hold_open is None else f"f = open({hold_open!r}, 'a'); {SLEEP}"
    out = subprocess.run(["sh", "-c", f'{sys.executable} -c "{code}" >/dev/null 2>&1 & echo $!'],
                         capture_output=True, text=True, check=True).stdout
    pid = int(out)
    deadline = time.monotonic() + 10
    while hold_open is not None and not uses_nvidia(pid, hold_open[:-1]):
        assert time.monotonic() < deadline, "the orphan never opened its device"
        time.sleep(0.02)
    return pid


def test_an_open_nvidia_device_proves_the_pids_are_ours(tmp_path, sleeper):
    prefix = device_prefix(tmp_path)
    Path(prefix).parent.mkdir()
    user = sleeper(hold_open=prefix + "0")
    plain = sleeper()
    assert uses_nvidia(user.pid, prefix) and not uses_nvidia(plain.pid, prefix)
    assert not uses_nvidia(user.pid)  # no /dev/nvidia* here
    assert not uses_nvidia(HOST_PID_OFFSET + 7, prefix)

    gpu_user, stranger = orphan(hold_open=prefix + "0"), orphan()
    try:
        assert os.getpid() not in [p.pid for p in psutil.Process(gpu_user).parents()]
        pm = PidMap(host_ns=False, host_proc=[], device_prefix=prefix)
        pm.read(lambda: _reading(stranger))
        assert pm.mode is PidMode.UNDECIDED  # here, but nothing says it uses a GPU
        pm.read(lambda: _reading(stranger, gpu_user))
        assert pm.mode is PidMode.MATCH
    finally:
        for pid in (gpu_user, stranger):
            psutil.Process(pid).kill()


def test_nspid_maps_only_the_same_process(tmp_path, sleeper):
    """A host /proc entry whose NSpid names a process here maps to it only when both
    started at the same clock tick."""
    p = sleeper()
    host = p.pid + HOST_PID_OFFSET
    stat = Path(f"/proc/{p.pid}/stat").read_text()
    ticks = start_ticks("/proc", p.pid)
    assert ticks is not None and ticks > 0
    root = tmp_path / "hostproc"
    (root / str(host)).mkdir(parents=True)
    (root / str(host) / "status").write_text(f"Name:\tpython\nNSpid:\t{host}\t{p.pid}\n")
    (root / str(host) / "stat").write_text(stat.replace(f" {ticks} ", f" {ticks + 1} "))
    pm = PidMap(host_ns=False, host_proc=[str(root)])
    pm.read(lambda: _reading(host))
    assert pm.mode is PidMode.PER_GPU  # a different process: not mapped

    (root / str(host) / "stat").write_text(stat)
    pm = PidMap(host_ns=False, host_proc=[str(root)])
    devices = pm.read(lambda: _reading(host))
    assert pm.mode is PidMode.NSPID and pm.root == str(root)
    assert devices[0].processes == (GpuProcess(p.pid, 100 * MiB, reported=host),)


@pytest.mark.parametrize("kind", ["host", "nspid"])
def test_gpu_memory_kill_and_peak_in_a_container(tmp_path, kind):
    """Host pids: through NSpid the fold's own memory, in the fallback the GPU's used
    memory (here only the fold holds any): over max_gpu_memory either way, never 0."""
    inv = FakeInventory(tmp_path / "gpu", {0: 16 * GiB}, pids=kind)
    spec = base_spec(tmp_path, entrypoint="gpufold:gpu_hog",
                     params={"fakegpu": str(tmp_path / "gpu"), "used": 600 * MiB},
                     resources={"gpus": "auto", "min_free_memory": 0},
                     limits={"max_gpu_memory": "500MiB"}, retry={"attempts": 1})
    notes: list[str] = []
    t0 = time.monotonic()
    df = foldrunner.run(spec, options=foldrunner.RunOptions(inventory=inv), notes=notes.append)
    row = df.iloc[0]
    assert row["status"] == "memory", row["error"]
    assert "held 600 MiB on GPU 0, over max_gpu_memory 500 MiB" in row["error"]
    assert row["peak_gpu_mb"] == 600
    assert time.monotonic() - t0 < 10
    mode = PidMode.PER_GPU if kind == "host" else PidMode.NSPID
    assert inv.pids.mode is mode
    assert [n for n in notes if n.startswith("GPU memory of folds: ")] == [
        f"GPU memory of folds: {mode.line}" + (
            ": max_gpu_memory and peak_gpu_mb count the whole GPU's used memory while any"
            " process holds memory on it" if mode is PidMode.PER_GPU else "")]


def test_in_the_fallback_peak_gpu_mb_is_the_gpus_used_memory(tmp_path):
    """Another process's memory on the GPU counts too: the fallback cannot tell whose it is."""
    inv = FakeInventory(tmp_path / "gpu", {0: 16 * GiB}, pids="host")
    other = subprocess.Popen([sys.executable, "-c", SLEEP])
    try:
        hold(tmp_path / "gpu", 0, other.pid, 200 * MiB)
        spec = base_spec(tmp_path, entrypoint="gpufold:gpu_hog",
                         params={"fakegpu": str(tmp_path / "gpu"), "used": 300 * MiB},
                         resources={"gpus": "auto", "min_free_memory": 0},
                         limits={"max_gpu_memory": "400MiB"}, retry={"attempts": 1})
        df = foldrunner.run(spec, options=foldrunner.RunOptions(inventory=inv))
    finally:
        other.kill()
        other.wait()
    row = df.iloc[0]
    assert row["status"] == "memory" and row["peak_gpu_mb"] == 500, row["error"]


def test_in_the_fallback_a_slot_waits_for_the_folds_leftover_process(tmp_path):
    """The fold's grandchild left its session and the fold returned at once: the slot
    finds it by its marker, waits for it, and it is killed after the grace."""
    inv = FakeInventory(tmp_path / "gpu", {0: 8 * GiB}, pids="host")
    spec = base_spec(tmp_path, entrypoint="containerfold:quick_leak", cv={"folds": 2},
                     workdir=str(Path(__file__).parent),
                     params={"fakegpu": str(tmp_path / "gpu")},
                     resources={"gpus": "auto", "min_free_memory": 0, "per_gpu": 1},
                     limits={"grace": "1s"})
    notes: list[str] = []
    df = foldrunner.run(spec, options=foldrunner.RunOptions(inventory=inv), notes=notes.append)
    assert list(df["status"]) == ["ok", "ok"]
    assert inv.pids.mode is PidMode.PER_GPU
    run_dir = tmp_path / "run"
    leaker = int((run_dir / "leaker.pid").read_text())
    assert not psutil.pid_exists(leaker) or psutil.Process(leaker).status() == "zombie"
    assert float((run_dir / "start.1").read_text()) - df.iloc[0]["ended_at"] >= 0.9
    assert any(f"fold t0-r0-f0 left 1 process(es) holding memory on GPU 0 ([{leaker}])" in n
               for n in notes), notes

