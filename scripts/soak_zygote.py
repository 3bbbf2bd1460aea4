#!/usr/bin/env python3
"""Soak test of the zygote (resources.zygote): many Keras folds forked from a server
that imported TensorFlow, each checked bit for bit against the same fold run by spawn.

    python scripts/soak_zygote.py --folds 500

A hang shows as a fold ending in `timeout`; a wrong result as a metric that differs
from the spawn reference of the same fold index (same seed, one thread).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
       "TF_NUM_INTEROP_THREADS": "1"}


def run(tmp: Path, name: str, folds: int, reps: int, zygote: bool, method: str):
    import foldrunner

    spec = {
        "name": name, "entrypoint": "_keras_fit:fold_metrics", "workdir": str(HERE),
        "preload": ["tensorflow", "keras", "sklearn.datasets"], "cv": {"folds": folds},
        "search": {"grid": {"rep": list(range(reps))}},
        "resources": {"gpus": "none", "workers": 2, "spares": False, "zygote": zygote},
        "limits": {"timeout": "2m", "grace": "5s"}, "retry": {"attempts": 1}, "env": ENV,
        "output": {"dir": str(tmp / name)},
    }
    notes: list[str] = []
    t0 = time.perf_counter()
    df = foldrunner.run(spec, options=foldrunner.RunOptions(start_method=method), notes=notes.append)
    return df, time.perf_counter() - t0, notes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=500, help="zygote folds in all")
    ap.add_argument("--distinct", type=int, default=25, help="distinct fold indices (seeds)")
    args = ap.parse_args()
    reps = math.ceil(args.folds / args.distinct)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ref, ref_s, _ = run(tmp, "reference", args.distinct, 1, zygote=False, method="spawn")
        zyg, zyg_s, notes = run(tmp, "zygote", args.distinct, reps, zygote=True, method="forkserver")
    assert (ref["status"] == "ok").all(), ref[["status", "error"]]
    expected = {int(r.fold): (r.metric_loss, r.metric_acc) for r in ref.itertuples()}
    statuses = zyg["status"].value_counts().to_dict()
    wrong = [r.fold_id for r in zyg.itertuples()
             if r.status == "ok" and (r.metric_loss, r.metric_acc) != expected[int(r.fold)]]
    print(f"zygote soak: {len(zyg)} Keras folds ({args.distinct} seeds x {reps}), 2 workers")
    print(f"  notes: {notes or 'none'}")
    print(f"  statuses: {statuses}; hangs (timeouts): {statuses.get('timeout', 0)};"
          f" results differing from spawn: {len(wrong)} {wrong[:5]}")
    print(f"  distinct processes: {zyg['metric_pid'].nunique()} for {len(zyg)} folds")
    print(f"  median fold duration: zygote {statistics.median(zyg['duration_s']):.2f}s,"
          f" spawn {statistics.median(ref['duration_s']):.2f}s")
    print(f"  wall: zygote {zyg_s:.0f}s for {len(zyg)} folds ({zyg_s / len(zyg):.2f}s/fold);"
          f" spawn {ref_s:.0f}s for {len(ref)} folds ({ref_s / len(ref):.2f}s/fold)")
    ok = statuses == {"ok": len(zyg)} and not wrong
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
