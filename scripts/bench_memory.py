#!/usr/bin/env python3
"""Host memory across N compile-and-fit folds: one process against a process per fold.

Side by side, in one run:
  in-process, no cleanup     : one Python process fits N models one after another
  in-process, clear_session  : the same, with keras.backend.clear_session() + gc.collect()
  foldrunner                 : the same N fits as N folds (1 worker, warm spares)
For the in-process loops, the process's RSS after each fit; for foldrunner, each fold's
peak memory (PSS of its tree) and the orchestrator's own RSS after each fold.
Writes bench_out/memory.csv and bench_out/memory.png.

    python scripts/bench_memory.py --folds 40
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
       "TF_NUM_INTEROP_THREADS": "1"}


def inprocess(n: int, cleanup: bool) -> None:
    """Child mode: fit n models in this process; print one JSON line per fit."""
    import gc

    import psutil

    sys.path.insert(0, str(HERE))
    from _keras_fit import data, fit_once

    X, y = data()
    me = psutil.Process()
    for i in range(n):
        seconds = fit_once(X, y, i)
        if cleanup:
            import keras

            keras.backend.clear_session()
            gc.collect()
        print(json.dumps({"i": i, "rss_mb": me.memory_info().rss / 2**20, "fit_s": seconds}),
              flush=True)


def run_inprocess(n: int, cleanup: bool) -> list[dict]:
    args = [sys.executable, __file__, "--child", "clear" if cleanup else "none", "--folds", str(n)]
    out = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **ENV}, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def run_foldrunner(n: int) -> tuple[list[float], list[float], list[float]]:
    import psutil

    import foldrunner

    me = psutil.Process()
    orchestrator: list[float] = []

    class Sample:
        def attempt_started(self, *a: object) -> None:
            pass

        def attempt_ended(self, fold: object, result: object, final: bool) -> None:
            orchestrator.append(me.memory_info().rss / 2**20)

    with tempfile.TemporaryDirectory() as tmp:
        spec = {
            "name": "mem", "entrypoint": "_keras_fit:fold", "workdir": str(HERE),
            "preload": ["tensorflow", "keras", "sklearn.datasets"], "cv": {"folds": n},
            "resources": {"gpus": "none", "workers": 1, "spares": True}, "env": ENV,
            "output": {"dir": str(Path(tmp) / "run")},
        }
        df = foldrunner.run(spec, events=Sample())
    assert (df["status"] == "ok").all(), df[["status", "error"]]
    df = df.sort_values("fold")
    return list(df["peak_rss_mb"]), orchestrator, list(df["metric_fit_s"])


def drift(series: list[float], start: int = 4) -> float:
    return (series[-1] - series[start]) / series[start] * 100


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=40)
    ap.add_argument("--child", choices=["none", "clear"], help=argparse.SUPPRESS)
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()
    if args.child:
        inprocess(args.folds, args.child == "clear")
        return 0
    n = args.folds
    none = run_inprocess(n, cleanup=False)
    clear = run_inprocess(n, cleanup=True)
    fr_peak, orch, fr_fit = run_foldrunner(n)
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    with open(out / "memory.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["fold", "inprocess_rss_mb", "inprocess_clear_session_rss_mb",
                    "foldrunner_fold_peak_mb", "orchestrator_rss_mb",
                    "inprocess_fit_s", "inprocess_clear_session_fit_s", "foldrunner_fit_s"])
        for i in range(n):
            w.writerow([i + 1, f"{none[i]['rss_mb']:.1f}", f"{clear[i]['rss_mb']:.1f}",
                        f"{fr_peak[i]:.1f}", f"{orch[i]:.1f}", f"{none[i]['fit_s']:.3f}",
                        f"{clear[i]['fit_s']:.3f}", f"{fr_fit[i]:.3f}"])
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs = range(1, n + 1)
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.plot(xs, [r["rss_mb"] for r in none], label="one process, no cleanup (RSS)")
        ax.plot(xs, [r["rss_mb"] for r in clear], label="one process, clear_session (RSS)")
        ax.plot(xs, fr_peak, label="foldrunner: each fold's peak (PSS of its tree)")
        ax.plot(xs, orch, label="foldrunner: orchestrator (RSS)")
        ax.set_xlabel("fold (compile + fit)")
        ax.set_ylabel("MiB")
        ax.set_title(f"Host memory over {n} Keras fits")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "memory.png", dpi=100)
    except ImportError:
        print("(matplotlib is not installed: no plot)")
    per100 = lambda s: (s[-1] - s[4]) / (n - 5) * 100  # noqa: E731
    print(f"{n} compile-and-fit folds of a 2x256 MLP on digits, 2 epochs, 1 thread")
    print(f"  one process, no cleanup    : RSS {none[4]['rss_mb']:.0f} -> {none[-1]['rss_mb']:.0f} MiB"
          f" (fold 5 -> {n}), +{per100([r['rss_mb'] for r in none]):.0f} MiB per 100 fits;"
          f" fit {none[4]['fit_s']:.2f}s -> {none[-1]['fit_s']:.2f}s")
    print(f"  one process, clear_session : RSS {clear[4]['rss_mb']:.0f} -> {clear[-1]['rss_mb']:.0f} MiB,"
          f" +{per100([r['rss_mb'] for r in clear]):.0f} MiB per 100 fits;"
          f" fit {clear[4]['fit_s']:.2f}s -> {clear[-1]['fit_s']:.2f}s")
    print(f"  foldrunner, fold peak      : {fr_peak[4]:.0f} -> {fr_peak[-1]:.0f} MiB,"
          f" drift {drift(fr_peak):+.1f}% (goal: within 3%); fit {fr_fit[4]:.2f}s -> {fr_fit[-1]:.2f}s")
    print(f"  foldrunner, orchestrator   : {orch[4]:.0f} -> {orch[-1]:.0f} MiB, drift {drift(orch):+.1f}%")
    print(f"  growth ratio (in-process no cleanup RSS / foldrunner fold peak, fold {n}):"
          f" {none[-1]['rss_mb'] / fr_peak[-1]:.2f}x")
    print(f"wrote {out / 'memory.csv'} and {out / 'memory.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
