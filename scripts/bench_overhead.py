#!/usr/bin/env python3
"""Per-fold overhead: foldrunner against a bare multiprocess loop, side by side.

The baseline is the floor of "one fresh process per task": a loop that keeps
``--workers`` processes in flight, each started by ``multiprocess`` with the fastest
safe start method (forkserver, no preloads) and a pipe of its own, and collects each
one's small result. foldrunner runs the same trivial work as N folds, journaling,
monitoring, logs and results files included. Both run in this one process, one after
the other, for ``--repeat`` rounds; the best round of each is compared.

    python scripts/bench_overhead.py --folds 200 --workers 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def bare_loop(n: int, workers: int) -> float:
    """Seconds for n tasks, each in a fresh forkserver child with its own pipe."""
    import multiprocess
    from multiprocess.connection import wait

    from _trivial import bare_task

    ctx = multiprocess.get_context("forkserver")
    ctx.set_forkserver_preload([])
    t0 = time.perf_counter()
    todo = list(range(n))
    running = {}
    results = []
    while todo or running:
        while todo and len(running) < workers:
            i = todo.pop()
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=bare_task, args=(w, i))
            p.start()
            w.close()
            running[p.sentinel] = (p, r)
        for s in wait(list(running)):
            p, r = running.pop(s)
            if r.poll():
                results.append(r.recv())
            p.join()
            p.close()
            r.close()
    assert len(results) == n, len(results)
    return time.perf_counter() - t0


def foldrunner_run(n: int, workers: int) -> float:
    """Seconds for n trivial folds through foldrunner.run (preflight included)."""
    import foldrunner

    with tempfile.TemporaryDirectory() as tmp:
        spec = {
            "name": "bench",
            "entrypoint": "_trivial:fold",
            "workdir": str(HERE),
            "cv": {"folds": n},
            "resources": {"gpus": "none", "workers": workers},
            "output": {"dir": str(Path(tmp) / "run")},
        }
        t0 = time.perf_counter()
        df = foldrunner.run(spec)
        elapsed = time.perf_counter() - t0
        assert (df["status"] == "ok").all() and len(df) == n, df["status"].value_counts()
    return elapsed


def _trivial_trainable(config):  # a Ray Tune trial: the same trivial work
    return {"acc": 1.0, "i": config["i"]}


def ray_tune(n: int, workers: int) -> float:
    """Seconds for n trivial Ray Tune trials at ``workers`` concurrent trials (ray.init excluded)."""
    import ray
    from ray import tune

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR", configure_logging=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tuner = tune.Tuner(
                _trivial_trainable,
                param_space={"i": tune.grid_search(list(range(n)))},
                tune_config=tune.TuneConfig(max_concurrent_trials=workers),
                run_config=tune.RunConfig(storage_path=tmp, verbose=0),
            )
            t0 = time.perf_counter()
            results = tuner.fit()
            elapsed = time.perf_counter() - t0
            assert len(results) == n and not results.errors
    finally:
        ray.shutdown()
    return elapsed


def ray_tasks_max_calls_1(n: int, workers: int) -> float:
    """Seconds for n trivial Ray tasks, each in a fresh worker (max_calls=1)."""
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR", configure_logging=False)
    try:
        task = ray.remote(max_calls=1, num_cpus=1)(_trivial_trainable)
        ray.get(task.remote({"i": -1}))  # the cluster is up and a worker has started once
        t0 = time.perf_counter()
        out = ray.get([task.remote({"i": i}) for i in range(n)])
        elapsed = time.perf_counter() - t0
        assert len(out) == n
    finally:
        ray.shutdown()
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ray-folds", type=int, default=40,
                    help="trials for the Ray comparisons (they are slow), where ray[tune] is installed")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    bare_loop(10, args.workers)  # warm up: start the fork servers, fill the caches
    foldrunner_run(10, args.workers)
    bare, ours = [], []
    for _ in range(args.repeat):
        bare.append(bare_loop(args.folds, args.workers))
        ours.append(foldrunner_run(args.folds, args.workers))
    b, o = min(bare), min(ours)
    n = args.folds
    print(f"{n} trivial tasks at {args.workers} workers, best of {args.repeat} rounds")
    print(f"  bare multiprocess loop : {n / b:7.1f} tasks/s  {1000 * b / n:6.2f} ms/task")
    print(f"  foldrunner.run         : {n / o:7.1f} folds/s  {1000 * o / n:6.2f} ms/fold")
    print(f"  ratio (foldrunner/bare per-task cost): {o / b:.2f}x  (goal: <= 1.3x)")
    try:
        import ray  # noqa: F401
    except ImportError:
        print("ray[tune] is not installed: no Ray comparison (pip install 'ray[tune]')")
        return 0
    m = args.ray_folds
    tune_s = ray_tune(m, args.workers)
    tasks_s = ray_tasks_max_calls_1(m, args.workers)
    print(f"{m} trivial trials at {args.workers} concurrent, Ray {ray.__version__}")
    print(f"  Ray Tune                : {m / tune_s:7.2f} trials/s")
    print(f"  Ray tasks, max_calls=1  : {m / tasks_s:7.2f} tasks/s")
    print(f"  foldrunner / Ray Tune   : {(n / o) / (m / tune_s):7.0f}x  (goal: >= 50x)")
    print(f"  foldrunner / Ray tasks  : {(n / o) / (m / tasks_s):7.0f}x  (goal: >= 20x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
