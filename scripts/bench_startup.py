#!/usr/bin/env python3
"""Fold startup with TensorFlow: cold (spawn; forkserver) against warm spares.

For each mode, N folds run one after another on one slot. Each fold imports TensorFlow
and then "trains" for --work seconds. Measured from the journal and the folds:

  startup  : from the attempt's launch to the entry point's first line
  idle gap : from the end of the previous fold on the slot to this fold's first line
             (what the slot loses between consecutive folds)

    python scripts/bench_startup.py --folds 6 --work 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def run_mode(name: str, folds: int, work: float, spares: bool, method: str,
             zygote: bool = False) -> dict[str, float]:
    import foldrunner

    with tempfile.TemporaryDirectory() as tmp:
        spec = {
            "name": "startup", "entrypoint": "_tf_fold:fold", "workdir": str(HERE),
            "preload": ["tensorflow"] if spares or zygote else [],
            "params": {"work": work}, "cv": {"folds": folds},
            "resources": {"gpus": "none", "workers": 1, "spares": spares, "zygote": zygote},
            "env": {"TF_CPP_MIN_LOG_LEVEL": "3"},
            "output": {"dir": str(Path(tmp) / "run")},
        }
        t0 = time.perf_counter()
        df = foldrunner.run(spec, options=foldrunner.RunOptions(start_method=method))
        wall = time.perf_counter() - t0
    assert (df["status"] == "ok").all(), df[["status", "error"]]
    df = df.sort_values("started_at")
    startup = list(df["metric_first_line"] - df["started_at"])
    gaps = list(df["metric_first_line"].iloc[1:].values - df["ended_at"].iloc[:-1].values)
    return {"startup": statistics.median(startup), "gap": statistics.median(gaps), "wall": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=6)
    ap.add_argument("--work", type=float, default=4.0)
    args = ap.parse_args()
    modes = [
        ("cold, spawn", False, "spawn", False),
        ("cold, forkserver", False, "forkserver", False),
        ("warm spares", True, "forkserver", False),
        ("zygote (opt-in)", False, "forkserver", True),
    ]
    res = {}
    for name, spares, method, zygote in modes:
        res[name] = run_mode(name, args.folds, args.work, spares, method, zygote)
    cold = res["cold, spawn"]
    print(f"{args.folds} folds importing TensorFlow, {args.work:g}s of work each, one slot")
    print(f"{'mode':18} {'startup (median)':>17} {'idle gap (median)':>18} {'wall':>8}")
    for name, r in res.items():
        print(f"{name:18} {r['startup'] * 1000:14.0f} ms {r['gap'] * 1000:15.0f} ms {r['wall']:7.1f}s")
    warm = res["warm spares"]
    print(f"idle gap, cold spawn / warm spares: {cold['gap'] / warm['gap']:.0f}x  (goal: >= 20x;"
          f" warm median {warm['gap'] * 1000:.0f} ms, goal < 100 ms)")
    zyg = res["zygote (opt-in)"]
    print(f"idle gap, cold spawn / zygote: {cold['gap'] / zyg['gap']:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
