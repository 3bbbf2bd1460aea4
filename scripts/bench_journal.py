#!/usr/bin/env python3
"""The journal's cost: per attempt (start + end, each its own committed transaction),
and building the results table from a 20,000-attempt journal.

Side by side with a baseline: the same rows appended to a CSV file, flushed per row
(what a run without a journal would at least do to keep its results).

    python scripts/bench_journal.py --attempts 20000
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from foldrunner.store.journal import Journal  # noqa: E402
from foldrunner.wire.outcome import AttemptResult, Status  # noqa: E402
from foldrunner.config.plan import build_plan  # noqa: E402
from foldrunner.store.results import build_table  # noqa: E402
from foldrunner.config.spec import load_spec  # noqa: E402


def make_plan(n_folds: int, tmp: Path):
    trials = max(1, n_folds // 10)
    spec = load_spec(
        {
            "name": "bench",
            "entrypoint": "m:f",
            "workdir": str(tmp),
            "params": {"epochs": 5},
            "search": {"random": {"samples": trials, "seed": 0,
                                  "space": {"lr": {"loguniform": [1e-4, 1e-1]},
                                            "units": {"choice": [32, 64, 128]}}}},
            "cv": {"folds": 10},
        }
    )
    return build_plan(spec)


def fill(journal: Journal, plan, attempts: int, rng: random.Random) -> float:
    """Write ``attempts`` attempts (about 1 in 10 folds retried); return seconds."""
    t0 = time.perf_counter()
    n = 0
    for f in plan.folds:
        tries = 2 if rng.random() < 0.1 else 1
        for a in range(1, tries + 1):
            if n >= attempts:
                return time.perf_counter() - t0
            now = time.time()
            journal.start_attempt(f.fold_id, a, started_at=now, pid=1000 + n,
                                  pid_started_at=now, gpu=n % 2, log_path=f"logs/{f.fold_id}.{a}.log")
            ok = a == tries
            journal.end_attempt(AttemptResult(
                fold_id=f.fold_id, attempt=a, status=Status.OK if ok else Status.CRASHED,
                started_at=now, ended_at=now + 1, duration_s=1.0, gpu=n % 2, pid=1000 + n,
                exit_code=None if ok else -9, error="" if ok else "killed by SIGKILL",
                metrics={"val_accuracy": rng.random(), "val_loss": rng.random()} if ok else {},
                peak_rss_mb=500 + rng.random(), log_path=f"logs/{f.fold_id}.{a}.log",
            ))
            n += 1
    return time.perf_counter() - t0


def csv_baseline(path: Path, attempts: int) -> float:
    t0 = time.perf_counter()
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        for i in range(attempts):
            w.writerow([f"t{i}", 1, "ok", time.time(), 1.0, 0.97, 0.11])
            fh.flush()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attempts", type=int, default=20000)
    ap.add_argument("--timed", type=int, default=2000, help="attempts timed one by one")
    args = ap.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        plan = make_plan(int(args.attempts * 1.0) + 100, tmp)
        with Journal(tmp / "timed.sqlite") as j:
            j.initialise(run_id="bench", spec_yaml="", plan=plan, name="bench")
            per = fill(j, plan, args.timed, rng) / args.timed
        base = csv_baseline(tmp / "base.csv", args.timed) / args.timed
        with Journal(tmp / "big.sqlite") as j:
            j.initialise(run_id="bench", spec_yaml="", plan=plan, name="bench")
            fill(j, plan, args.attempts, rng)
            t0 = time.perf_counter()
            df = build_table(j)
            table_s = time.perf_counter() - t0
            n_att = len(j.attempts())
    print(f"journal: {per * 1000:.3f} ms per attempt (start + end, 2 commits, WAL, synchronous=NORMAL)"
          f"  goal < 5 ms")
    print(f"baseline: {base * 1000:.3f} ms per row appended to a flushed CSV;"
          f" ratio {per / base:.1f}x")
    print(f"results table: {table_s:.3f} s for {n_att} attempts -> {len(df)} rows  goal < 2 s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
