"""A preload module for the spare tests: records the environment it was imported in,
and crashes the process the first time when asked to (a spare that dies while waiting)."""

import json
import os
import time
from pathlib import Path

_root = os.environ.get("SPARE_TEST_DIR")
if _root and "/spare/" in os.environ.get("FOLDRUNNER_FOLD", ""):  # imported by a spare
    crash_flag = Path(_root, "crash-first-spare")
    if crash_flag.exists():
        crash_flag.unlink()
        os._exit(13)
    if Path(_root, "crash-every-spare").exists():
        os._exit(14)
    Path(_root, f"import.{os.getpid()}").write_text(
        json.dumps({"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "at": time.time()}))

IMPORTED_AT = time.time()


def fold(ctx):
    import spare_preload

    time.sleep(ctx.params.get("seconds", 0.2))
    return {"pid": os.getpid(), "imported_before": float(spare_preload.IMPORTED_AT < time.time()),
            "cuda": os.environ["CUDA_VISIBLE_DEVICES"], "gpu": ctx.gpu}
