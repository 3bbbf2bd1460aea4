"""``./dev example`` picks GPU TensorFlow where an NVIDIA GPU is visible: its detection
(``nvidia_gpu`` in ``dev``) run by ``sh`` with a stand-in ``nvidia-smi`` on PATH."""

from __future__ import annotations

import glob
import platform
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

DEV = Path(__file__).resolve().parents[2] / "dev"
LIST_2 = 'echo "GPU 0: NVIDIA H200 (UUID: GPU-a)"; echo "GPU 1: NVIDIA H200 (UUID: GPU-b)"'
BROKEN = 'echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver"; exit 9'
NO_GPU = "cpu: no NVIDIA GPU: nvidia-smi -L lists none and /proc/driver/nvidia/gpus is empty"
DRIVER_LISTS_GPUS = bool(glob.glob("/proc/driver/nvidia/gpus/*"))


def detect(tmp_path: Path, smi: str | None, dev_tf: str | None = None) -> str:
    """What dev decides, and why: ``gpu: <why>`` or ``cpu: <why>``."""
    func = re.search(r"^nvidia_gpu\(\) \{\n.*?^\}\n", DEV.read_text(), re.S | re.M)
    assert func is not None, "dev has no nvidia_gpu()"
    bin_dir = Path(tempfile.mkdtemp(dir=tmp_path))
    for tool in ("uname", "grep", "sh"):  # what the function needs, without the real nvidia-smi
        (bin_dir / tool).symlink_to(subprocess.check_output(["sh", "-c", f"command -v {tool}"], text=True).strip())
    if smi is not None:
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\n{smi}\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    env = {"PATH": str(bin_dir)}
    if dev_tf is not None:
        env["DEV_TF"] = dev_tf
    script = func.group(0) + 'if why=$(nvidia_gpu); then echo "gpu: $why"; else echo "cpu: $why"; fi\n'
    r = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_dev_is_valid_sh():
    subprocess.run(["sh", "-n", str(DEV)], check=True)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="GPU TensorFlow wheels are x86_64 only")
def test_a_gpu_listed_by_nvidia_smi_picks_gpu_tensorflow(tmp_path):
    assert detect(tmp_path, LIST_2) == "gpu: nvidia-smi -L lists 2 GPU(s)"


def test_no_gpu_picks_cpu_tensorflow(tmp_path):
    if DRIVER_LISTS_GPUS:  # pragma: no cover - a machine with an NVIDIA driver
        assert detect(tmp_path, BROKEN).startswith("gpu: the NVIDIA driver lists GPUs")
    else:
        assert detect(tmp_path, BROKEN) == NO_GPU
        assert detect(tmp_path, None) == NO_GPU


def test_dev_tf_overrides_what_is_found(tmp_path):
    assert detect(tmp_path, LIST_2, "cpu") == "cpu: DEV_TF=cpu"
    assert detect(tmp_path, None, "gpu") == "gpu: DEV_TF=gpu"
