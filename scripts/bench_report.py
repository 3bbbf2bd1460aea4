#!/usr/bin/env python3
"""The report's cost on a big run: builds a synthetic 20,000-fold journal (2,000 trials x
10 folds, 16 slots, about 5% of the folds failed once and retried, 20 ``ctx.report``
calls of three metrics per attempt: 420,000 report rows) and times ``foldrunner report``
on it, end to end (a fresh process: Python, imports, reading, drawing, writing).

    python scripts/bench_report.py                 # goals: < 5 s, < 15 MB
    python scripts/bench_report.py --folds 2000 --keep /tmp/bench-run
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from foldrunner.config.plan import build_plan  # noqa: E402
from foldrunner.config.spec import load_spec  # noqa: E402
from foldrunner.store.journal import Journal  # noqa: E402
from foldrunner.store.paths import RunPaths  # noqa: E402
from foldrunner.wire.outcome import AttemptResult, Status  # noqa: E402

GOAL_S = 5.0
GOAL_MB = 15.0


def build_run(root: Path, folds: int, reports: int, slots: int, seed: int = 0) -> int:
    """Write a finished run of ``folds`` folds into ``root``; return the report rows."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    spec = load_spec({
        "name": "bench-report", "entrypoint": "m:f", "workdir": str(root),
        "params": {"epochs": reports},
        "search": {"random": {"samples": max(1, folds // 10), "seed": 0, "space": {
            "lr": {"loguniform": [1e-4, 1e-1]}, "units": {"choice": [32, 64, 128]},
            "dropout": {"uniform": [0.0, 0.5]}}}},
        "cv": {"folds": 10}, "objective": {"metric": "val_accuracy", "mode": "max"},
        "resources": {"gpus": [0, 1, 2, 3, 4, 5, 6, 7], "per_gpu": max(1, slots // 8)},
    })
    plan = build_plan(spec)
    paths = RunPaths(root)
    paths.make()
    paths.spec.write_text(f"name: bench-report\nentrypoint: m:f\nworkdir: {root}\n"
                          "objective: {metric: val_accuracy, mode: max}\n")
    free = [0.0] * slots  # when each slot is next free (seconds since t0)
    t0 = time.time() - 86400
    rows = 0
    with Journal(paths.journal) as j:
        j.initialise(run_id="bench", spec_yaml=paths.spec.read_text(), plan=plan, name="bench-report")
        history = []
        for n, f in enumerate(plan.folds):
            lr = float(f.params["lr"])
            tries = 2 if rng.random() < 0.05 else 1
            for a in range(1, tries + 1):
                slot = min(range(slots), key=free.__getitem__)
                start = free[slot] + rng.random() * 2
                ok = a == tries
                dur = rng.uniform(30, 90) if ok else rng.uniform(1, 30)
                free[slot] = start + dur
                gpu = slot % 8
                j.start_attempt(f.fold_id, a, started_at=t0 + start, pid=1000 + n, pid_started_at=None,
                                gpu=gpu, log_path=str(paths.log(f.fold_id, a)))
                acc = 0.6 + 0.3 * (1 - abs(lr - 0.01) * 8) + rng.gauss(0, 0.02)
                calls = reports if ok else reports // 3
                for seq in range(calls):
                    frac = (seq + 1) / reports
                    history.append((f.fold_id, a, seq, dur * frac, {
                        "epoch": seq + 1, "loss": round(1.5 * (1 - frac) + rng.random() * 0.1, 4),
                        "val_accuracy": round(acc * frac ** 0.3, 4), "accuracy": round(acc * frac ** 0.2, 4)}))
                if len(history) > 20000:
                    rows += len(history)
                    j.save_reports(history, {})
                    history = []
                status = Status.OK if ok else rng.choice([Status.CRASHED, Status.TIMEOUT, Status.MEMORY])
                error = "" if ok else {Status.CRASHED: "killed by SIGKILL without sending a result",
                                       Status.TIMEOUT: "timed out after 30m",
                                       Status.MEMORY: "over max_rss"}[status]
                j.end_attempt(AttemptResult(
                    fold_id=f.fold_id, attempt=a, status=status, started_at=t0 + start,
                    ended_at=t0 + start + dur, duration_s=dur, gpu=gpu, pid=1000 + n, error=error,
                    metrics={"val_accuracy": acc, "val_loss": rng.random()} if ok else {},
                    peak_rss_mb=800 + n * 0.01 + rng.random() * 50,
                    peak_gpu_mb=2000 + rng.random() * 300, log_path=str(paths.log(f.fold_id, a)),
                ))
                if not ok:
                    paths.log(f.fold_id, a).write_text(
                        "".join(f"epoch {e}: loss 0.{e}\n" for e in range(40)) + error + "\n")
        rows += len(history)
        j.save_reports(history, {})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=20000)
    ap.add_argument("--reports", type=int, default=20, help="ctx.report calls per ok attempt")
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="build the run here and keep it (reused when it is there)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp) / "run"
        if (root / "journal.sqlite").exists():
            print(f"journal: reusing {root}")
        else:
            t = time.perf_counter()
            rows = build_run(root, args.folds, args.reports, args.slots)
            print(f"journal: {args.folds} folds, {rows} report rows, built in "
                  f"{time.perf_counter() - t:.1f}s")
        out = Path(tmp) / "report.html"
        times, cpus = [], []
        for _ in range(args.repeat):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "foldrunner", "report", str(root), "--output", str(out)],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        size = os.path.getsize(out) / 1e6
    best = min(times)
    print(f"foldrunner report: best of {args.repeat} {best:.2f}s wall (all: "
          f"{', '.join(f'{x:.2f}' for x in times)}; CPU {min(cpus):.2f}s), {size:.1f} MB "
          f"(goals: < {GOAL_S:g} s, < {GOAL_MB:g} MB); load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    return 0 if best < GOAL_S and size < GOAL_MB else 1


if __name__ == "__main__":
    sys.exit(main())
