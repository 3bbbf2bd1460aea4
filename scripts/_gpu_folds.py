"""Fold entry points of ``scripts/gpu_check.py``: each one allocates real memory on its GPU
with whichever framework is installed (TensorFlow, PyTorch or CuPy) and says what it saw.

Which physical GPU a fold sees is read from the CUDA driver itself (``cuDeviceGetUuid``
through ctypes): the same for every framework, and comparable with NVML's UUIDs.
The framework ``fake`` allocates on the tests' fake NVML (``tests/fakegpu.py``): it writes
``$GPU_CHECK_FAKEGPU/<CUDA_VISIBLE_DEVICES>/<pid>`` and holds ``dev/nvidia<index>`` there
open, and its UUIDs are ``GPU-fake-<index>``;
it lets the checks' own logic run on a machine without a GPU.
Run as a script (``python _gpu_folds.py hold FRAMEWORK MIB SECONDS READY``) it is the
grandchild of :func:`grandchild_hog`: it allocates, writes READY, and holds.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FRAMEWORKS = ("tensorflow", "torch", "cupy")
"""In the order ``auto`` prefers them: TensorFlow is what foldrunner's users run."""
MiB = 1024 * 1024
FAKE_ENV = "GPU_CHECK_FAKEGPU"


def installed_frameworks() -> list[str]:
    return [name for name in FRAMEWORKS if importlib.util.find_spec(name) is not None]


def cuda_uuids(framework: str) -> list[str] | str:
    """The UUIDs (``GPU-...``, as NVML writes them) of the devices CUDA shows this process,
    in CUDA's order; a string saying why when the driver cannot be asked."""
    if framework == "fake":
        cvd = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return [f"GPU-fake-{i}" for i in cvd.split(",") if i]
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return f"libcuda.so.1 not loadable: {exc}"
    rc = cuda.cuInit(0)
    if rc != 0:
        return f"cuInit failed with CUresult {rc}"
    count = ctypes.c_int()
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return "cuDeviceGetCount failed"
    out = []
    for i in range(count.value):
        dev = ctypes.c_int()
        raw = (ctypes.c_ubyte * 16)()
        if cuda.cuDeviceGet(ctypes.byref(dev), i) != 0 or cuda.cuDeviceGetUuid(raw, dev) != 0:
            return f"cuDeviceGetUuid failed for device {i}"
        h = bytes(raw).hex()
        out.append(f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out


def allocate(framework: str, mib: int) -> Any:
    """``mib`` MiB on the first visible GPU, written once so that it is really there."""
    if framework == "fake":
        gpu = os.environ["CUDA_VISIBLE_DEVICES"].split(",")[0]
        root = os.environ[FAKE_ENV]
        Path(root, gpu, str(os.getpid())).write_text(str(mib * MiB))
        return open(Path(root, "dev", f"nvidia{gpu}"), "a")  # held open like /dev/nvidia<gpu>
    if framework == "torch":
        import torch

        x = torch.ones(mib * MiB, dtype=torch.uint8, device="cuda")
        torch.cuda.synchronize()
        return x
    if framework == "cupy":
        import cupy

        x = cupy.ones(mib * MiB, dtype=cupy.uint8)
        cupy.cuda.runtime.deviceSynchronize()
        return x
    if framework == "tensorflow":
        import tensorflow as tf

        with tf.device("/GPU:0"):
            x = tf.ones([mib * MiB // 4], dtype=tf.float32)
            float(tf.reduce_sum(x[:16]))
        return x
    raise ValueError(f"unknown framework {framework!r} (one of {FRAMEWORKS})")


def _seen(ctx: Any) -> dict[str, Any]:
    uuids = cuda_uuids(ctx.params["framework"])
    return {
        "pid": os.getpid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
        "visible": len(uuids) if isinstance(uuids, list) else -1,
        "uuid": ",".join(uuids) if isinstance(uuids, list) else "",
        "uuid_error": "" if isinstance(uuids, list) else uuids,
        "framework_imported_before": int(ctx.params["framework"] in sys.modules),
    }


def probe(ctx: Any) -> dict[str, Any]:
    """Say which GPUs CUDA shows, allocate ``mib`` MiB, hold it ``hold_s`` seconds."""
    t0 = time.time()
    seen = _seen(ctx)
    x = allocate(ctx.params["framework"], int(ctx.params["mib"]))
    t_alloc = time.time()
    time.sleep(float(ctx.params["hold_s"]))
    t1 = time.time()
    del x
    return {**seen, "gpu": -1 if ctx.gpu is None else ctx.gpu, "t0": t0, "t_alloc": t_alloc,
            "t1": t1}


def grandchild_hog(ctx: Any) -> dict[str, Any]:
    """Start a grandchild that allocates ``mib`` MiB and holds it; wait for it. The fold's
    own process touches no GPU: only the grandchild's memory can end it."""
    ready = Path(ctx.run_dir) / f"grandchild.{ctx.fold_id}.ready"
    p = subprocess.Popen([sys.executable, __file__, "hold", ctx.params["framework"],
                          str(ctx.params["mib"]), str(ctx.params["hold_s"]), str(ready)])
    Path(ctx.run_dir, f"grandchild.{ctx.fold_id}.pid").write_text(str(p.pid))
    code = p.wait()
    return {"grandchild_exit": code}


def _hold_main(framework: str, mib: str, seconds: str, ready: str) -> None:
    x = allocate(framework, int(mib))
    Path(ready).write_text(json.dumps({"pid": os.getpid(), "t": time.time()}))
    time.sleep(float(seconds))
    del x


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "hold":
        _hold_main(*sys.argv[2:])
    else:
        sys.exit("usage: _gpu_folds.py hold FRAMEWORK MIB SECONDS READY")
