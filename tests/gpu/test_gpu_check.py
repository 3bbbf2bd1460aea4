"""``scripts/gpu_check.py`` on a machine without a GPU: its plain "no GPU" answer, and every
check's own logic run for real (real folds through ``foldrunner.run``) against the fake
NVML, in the host's pid namespace and in a container whose NVML reports host pids."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from fakegpu import GiB, FakeInventory
from foldrunner.gpu.inventory import GpuInfo, NoGpus, NvmlInventory

pytestmark = pytest.mark.timeout(120)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"
SMI = "0, GPU-fake-0, 16384\n1, GPU-fake-1, 16384\n"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_without_a_gpu_it_says_so_and_exits_0():
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    try:
        NvmlInventory().devices()
    except NoGpus as exc:
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"gpu_check: no NVIDIA GPU here ({exc}): nothing to check.\n"
    else:  # pragma: no cover - on a machine with an NVIDIA driver
        assert r.stdout.startswith("gpu_check: ")


@pytest.mark.parametrize("kind", ["host-ns", "host"])
def test_every_check_passes_on_a_sound_fake_gpu_machine(tmp_path, capsys, gpu_check, kind):
    root = tmp_path / "gpu"
    rc = gpu_check.main(["--framework", "fake", "--hold", "2", "--keep", str(tmp_path / "runs")],
                        inventory=lambda: FakeInventory(root, {0: 16 * GiB, 1: 16 * GiB}, pids=kind),
                        smi=lambda: SMI, fake_root=str(root))
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    mode = "per-GPU fallback" if kind == "host" else "pids match"
    checks = [ln for ln in lines if ln.startswith(("PASS", "FAIL"))]
    expected = [
        "PASS  inventory vs nvidia-smi",
        "PASS  every fold sees only its GPU",
        "PASS  a fold's GPU memory read while it runs, given back after",
        "PASS  max_gpu_memory ends a fold whose grandchild holds the memory",
        "PASS  two folds per GPU with per_gpu: 2",
        "PASS  zygote (nothing to preload, CUDA_VISIBLE_DEVICES set after the import)",
    ]
    assert len(checks) == len(expected) and all(
        ln.startswith(e + ": ") for ln, e in zip(checks, expected)), out
    assert f"peak_gpu_mb 256..256 MiB for 256 MiB allocated ({mode})" in out
    assert "status memory after" in out and "gone: yes" in out
    assert "GPU 0: 4 folds, at most 2 at once" in out and "GPU 1: 4 folds, at most 2 at once" in out
    assert lines[-1] == "gpu_check: 6 PASS, 0 FAIL"


def test_a_disagreeing_nvidia_smi_fails(gpu_check, tmp_path):
    devices = FakeInventory(tmp_path, {0: 16 * GiB, 1: 16 * GiB}).devices()
    ok = gpu_check.check_inventory(devices, lambda: SMI)
    assert ok.ok and ok.figures.startswith("2 GPU(s) agree")
    bad = gpu_check.check_inventory(devices, lambda: "0, GPU-fake-0, 16384\n1, GPU-other, 8192\n")
    assert not bad.ok
    assert bad.figures == ("1 difference(s): GPU 1: foldrunner ('GPU-fake-1', 16384) vs nvidia-smi "
                           "('GPU-other', 8192)")

    def missing() -> str:
        raise FileNotFoundError("nvidia-smi is not on PATH")

    assert gpu_check.check_inventory(devices, missing).line() == (
        "FAIL  inventory vs nvidia-smi: nvidia-smi could not be read: nvidia-smi is not on PATH")


class SwappedOrder(FakeInventory):
    """A machine whose CUDA numbers its GPUs otherwise than NVML: CUDA's device 0 is
    NVML's GPU 1 (CUDA_DEVICE_ORDER defaults to FASTEST_FIRST)."""

    def devices(self) -> list[GpuInfo]:
        return [dataclasses.replace(d, uuid=f"GPU-fake-{1 - d.index}") for d in super().devices()]


def test_a_fold_that_sees_another_gpu_fails_the_pinning_check(gpu_check, tmp_path):
    root = tmp_path / "gpu"
    checker = gpu_check.Checker(lambda: SwappedOrder(root, {0: 16 * GiB, 1: 16 * GiB}), "fake",
                                tmp_path / "runs", hold_s=2.0, fake_root=str(root))
    pin, mem = checker.pinning_and_memory()
    assert not pin.ok and mem.ok
    assert "on GPU 0 saw GPU-fake-0, NVML's GPU 0 is GPU-fake-1 (CUDA's device order is not NVML's" in pin.figures


def test_concurrency_counts_overlap(gpu_check):
    assert gpu_check.concurrency([(0, 2), (1, 3), (4, 5)]) == (2, 1.0)
    assert gpu_check.concurrency([(0, 1), (1, 2)]) == (1, 0.0)  # one ends as the next starts
    assert gpu_check.concurrency([(0, 4), (1, 3), (2, 5)])[0] == 3
