"""GPUs on a GPU-less machine: explicit lists for pinning and sharing, a fake inventory at
the NVML boundary for auto, free-memory filtering, GPU memory limits and clean slots."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import foldrunner
from conftest import FOLDS, base_spec
from fakegpu import GiB, FakeInventory, NoNvml
from foldrunner.gpu.inventory import make_slots

pytestmark = pytest.mark.timeout(90)


def spans(run_dir: Path) -> list[tuple[int, float, float]]:
    return [tuple(json.loads(p.read_text())) for p in run_dir.glob("span.*")]


def test_each_fold_is_pinned_to_its_gpu(tmp_path):
    spec = base_spec(tmp_path, entrypoint="gpufold:pinned", cv={"folds": 4},
                     resources={"gpus": [0, 3], "per_gpu": 1})
    df = foldrunner.run(spec)
    assert list(df["status"]) == ["ok"] * 4
    assert set(df["gpu"]) == {0, 3}
    for _, row in df.iterrows():
        assert row["metric_cuda_visible_devices"] == str(row["gpu"])
        # NVML's index counts GPUs by PCI bus: CUDA must count the same way
        assert row["metric_cuda_device_order"] == "PCI_BUS_ID"
        assert row["metric_ctx_gpu"] == row["gpu"]
        assert row["metric_growth"] == "true"


def test_without_gpus_cuda_visible_devices_is_empty(tmp_path):
    df = foldrunner.run(base_spec(tmp_path, entrypoint="gpufold:pinned"))
    assert df.iloc[0]["metric_cuda_visible_devices"] == ""
    assert df.iloc[0]["metric_ctx_gpu"] == -1 and df["gpu"].isna().all()


def test_never_more_than_per_gpu_folds_on_a_gpu(tmp_path):
    spec = base_spec(tmp_path, entrypoint="gpufold:pinned", cv={"folds": 12},
                     params={"seconds": 0.3},
                     resources={"gpus": [0, 1], "per_gpu": 2, "workers": None})
    df = foldrunner.run(spec)
    assert (df["status"] == "ok").all()
    s = spans(tmp_path / "run")
    assert len(s) == 12
    events = sorted(itertools.chain.from_iterable(((a, 1, g), (b, -1, g)) for g, a, b in s),
                    key=lambda e: (e[0], e[1]))
    on = {0: 0, 1: 0}
    most_total = 0
    for _, delta, g in events:
        on[g] += delta
        assert on[g] <= 2, "more than per_gpu folds on one GPU at once"
        most_total = max(most_total, sum(on.values()))
    assert most_total >= 3  # the slots really ran in parallel


def test_cli_gpus_override_pins_folds(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"name: gpucli\nentrypoint: gpufold:pinned\nworkdir: {FOLDS}\ncv: {{folds: 2}}\n"
        "resources: {gpus: none}\nretry: {attempts: 1}\n"
    )
    run_dir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir",
                        str(run_dir), "--gpus", "2"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    df = foldrunner.load_results(run_dir)
    assert list(df["metric_cuda_visible_devices"]) == ["2", "2"] and list(df["gpu"]) == [2, 2]
    bad = subprocess.run([sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir",
                          str(tmp_path / "x"), "--gpus", "0,zero"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--gpus" in bad.stderr


def test_a_failing_gpu_is_taken_out_of_the_rotation(tmp_path):
    spec = base_spec(tmp_path, entrypoint="gpufold:bad_gpu", cv={"folds": 8},
                     params={"broken": 1}, resources={"gpus": [0, 1]},
                     retry={"attempts": 3, "on": ["crashed"], "backoff": 0})
    notes: list[str] = []
    df = foldrunner.run(spec, notes=notes.append)
    assert list(df["status"]) == ["ok"] * 8
    assert set(df["gpu"]) == {0}
    assert any("GPU 1 taken out of the rotation: 3 folds in a row failed" in n for n in notes), notes
    # retried folds went to the other GPU: no fold needed a third attempt
    assert df["attempts"].max() <= 2


def test_auto_picks_gpus_with_enough_free_memory(tmp_path):
    inv = FakeInventory(tmp_path / "gpu", {0: 8 * GiB, 1: GiB // 2, 2: 4 * GiB})
    slots, notes = make_slots("auto", per_gpu=2, min_free_memory=GiB, inventory=inv)
    assert sorted({s.gpu for s in slots}) == [0, 2] and len(slots) == 4
    assert [s.gpu for s in slots[:2]] == [0, 2]  # consecutive launches go to different GPUs
    assert any("GPU 1 skipped: 512 MiB free" in n for n in notes)

    spec = base_spec(tmp_path, entrypoint="gpufold:pinned", cv={"folds": 4},
                     resources={"gpus": "auto", "min_free_memory": "1GiB"})
    df = foldrunner.run(spec, options=foldrunner.RunOptions(inventory=inv))
    assert set(df["gpu"]) == {0, 2}
    assert all(df["metric_cuda_visible_devices"] == df["gpu"].astype(str))


def test_auto_without_nvml_runs_on_cpu_and_says_so(tmp_path):
    slots, notes = make_slots("auto", workers=3, inventory=NoNvml())
    assert [s.gpu for s in slots] == [None, None, None]
    assert any("no GPU: NVML is not available" in n for n in notes)
    slots, notes = make_slots("auto", min_free_memory=100 * GiB,
                              inventory=FakeInventory(tmp_path / "g", {0: GiB}), workers=1)
    assert [s.gpu for s in slots] == [None] and any("folds run on the CPU" in n for n in notes)


def test_gpu_memory_over_the_limit_ends_the_fold_as_memory(tmp_path):
    inv = FakeInventory(tmp_path / "gpu", {0: 8 * GiB})
    spec = base_spec(tmp_path, entrypoint="gpufold:gpu_hog",
                     params={"fakegpu": str(tmp_path / "gpu"), "used": 600 * 1024 * 1024},
                     resources={"gpus": "auto", "min_free_memory": 0},
                     limits={"max_gpu_memory": "500MiB"}, retry={"attempts": 1})
    t0 = time.monotonic()
    df = foldrunner.run(spec, options=foldrunner.RunOptions(inventory=inv))
    row = df.iloc[0]
    assert row["status"] == "memory", row["error"]
    assert "held 600 MiB on GPU 0, over max_gpu_memory 500 MiB" in row["error"]
    assert row["peak_gpu_mb"] == 600
    assert time.monotonic() - t0 < 10


def test_the_slot_comes_back_clean(tmp_path):
    inv = FakeInventory(tmp_path / "gpu", {0: 8 * GiB})
    spec = base_spec(tmp_path, entrypoint="gpufold:leak_onto_gpu", cv={"folds": 2},
                     params={"fakegpu": str(tmp_path / "gpu")},
                     resources={"gpus": "auto", "min_free_memory": 0, "per_gpu": 1},
                     limits={"grace": "1s"})
    notes: list[str] = []
    df = foldrunner.run(spec, options=foldrunner.RunOptions(inventory=inv), notes=notes.append)
    assert list(df["status"]) == ["ok", "ok"]
    run_dir = tmp_path / "run"
    leaker = int((run_dir / "leaker.pid").read_text())
    assert not psutil.pid_exists(leaker) or psutil.Process(leaker).status() == "zombie"
    ended0 = df.iloc[0]["ended_at"]
    start1 = float((run_dir / "start.1").read_text())
    assert start1 - ended0 >= 0.9  # the slot waited for the leaked GPU process to be gone
    assert any("fold t0-r0-f0 left 1 process(es) holding memory on GPU 0" in n for n in notes), notes


def test_gpus_listing_marks_foldrunner_folds(tmp_path):
    from foldrunner.gpu.inventory import GpuInfo, GpuProcess, describe

    env = {"FOLDRUNNER_FOLD": "abc123/t1-r0-f2/3", "PATH": "/usr/bin:/bin"}
    fold = subprocess.Popen(["sleep", "30"], env=env)
    other = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.1)
        info = GpuInfo(0, "Fake GPU", "GPU-x", 16 * GiB, 12 * GiB, 4 * GiB, 37,
                       (GpuProcess(fold.pid, 3 * GiB), GpuProcess(other.pid, None)))
        lines = describe([info])
    finally:
        for p in (fold, other):
            p.kill()
            p.wait()
    assert lines[0] == "GPU 0: Fake GPU  12288 MiB free of 16384 MiB  util 37%  2 process(es)"
    assert lines[1] == f"    pid {fold.pid}: 3072 MiB  foldrunner t1-r0-f2 attempt 3 (run abc123)"
    assert lines[2] == f"    pid {other.pid}: ?"


def test_gpus_command_lists_gpus_or_says_plainly_there_are_none():
    from foldrunner.gpu.inventory import NoGpus, NvmlInventory

    r = subprocess.run([sys.executable, "-m", "foldrunner", "gpus"], capture_output=True, text=True)
    assert r.returncode == 0
    try:
        NvmlInventory().devices()
    except NoGpus as exc:
        assert r.stdout == f"No GPUs: {exc}.\n"
    else:  # pragma: no cover - on a machine with an NVIDIA driver
        from foldrunner.gpu.pids import PidMode

        assert r.stdout.startswith("GPU 0: ")
        assert r.stdout.splitlines()[-1] in {m.line for m in PidMode}  # how memory is read
