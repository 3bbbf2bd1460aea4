#!/usr/bin/env python3
"""Per-fold overhead: foldrunner against a bare multiprocess loop, side by side.

The baseline is the floor of "one fresh process per task": a loop that keeps
``--workers`` processes in flight, each started by ``multiprocess`` with the fastest
safe start method (forkserver, no preloads) and a pipe of its own, and collects each
one's small result. foldrunner runs the same trivial work as N folds, journaling,
monitoring, logs and results files included. Both run in this one process, one after
the other, for ``--repeat`` rounds; the best round of each is compared.

    python scripts/bench_overhead.py --folds 200 --workers 2

With ``--ray`` it then starts one Ray cluster on this machine (tests/ray_cluster.py: a head
and ``--ray-nodes``-1 workers on 127.0.0.2, 127.0.0.3..., nothing reachable from outside
and nothing sent out) and measures on it, side by side with the local row: foldrunner's Ray
backend (``--folds`` folds), Ray Tune with one trial per fold and plain Ray tasks with
``max_calls=1`` (``--ray-folds`` each), all ``--workers`` at a time.

    python scripts/bench_overhead.py --folds 100 --workers 2 --ray

The Ray rows say the whole run's rate (its start included: imports, preflight, connecting,
the nodes' helpers) and its in-run rate (first fold's start to last fold's end), each
against the local backend's; and the idle gap of one slot between TensorFlow folds, local
warm spares against the Ray backend on a remote node (``--tf-folds``, ``--tf-work``).
"""

from __future__ import annotations

import argparse
import json
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
    IN_RUN.append(in_run_seconds(df))
    return elapsed


IN_RUN: list[float] = []
"""The in-run seconds (see :func:`in_run_seconds`) of each foldrunner_run, in order."""


def in_run_seconds(df) -> float:
    """From the first fold's start to the last fold's end (the results table's clocks):
    the run's time without its fixed start (imports, preflight; with Ray, connecting and
    the nodes' helpers), which a sweep of days pays once."""
    return float(df["ended_at"].max() - df["started_at"].min())


# --------------------------------------------------------------------------- --ray
# Every Ray measurement runs on one cluster on this machine, started by the tests' harness
# (tests/ray_cluster.py: nodes on 127.0.0.2, 127.0.0.3..., usage stats off, auth off, a HOME
# of its own; ../shared/RAY-TESTING.md), in a driver subprocess with the cluster's
# environment: this process never imports ray, and no Ray is started any other way.

def load_harness():
    """tests/ray_cluster.py, imported by its path (tests/ is not put on sys.path)."""
    import importlib.util

    path = HERE.parent / "tests" / "ray_cluster.py"
    spec = importlib.util.spec_from_file_location("ray_cluster", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ray_cluster"] = module
    spec.loader.exec_module(module)
    return module


_RAY_DRIVER = """
import json, sys, tempfile, time
import ray
address, n, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ray.init(address=address, logging_level="ERROR", log_to_driver=False)

def trivial(config):  # the same trivial work as _trivial.fold: one small result
    return {"i": config["i"], "acc": 1.0}
"""

_RAY_TUNE = _RAY_DRIVER + """
from ray import tune
with tempfile.TemporaryDirectory() as tmp:
    tuner = tune.Tuner(
        trivial,  # a function trainable: one trial per fold, each its own actor
        param_space={"i": tune.grid_search(list(range(n)))},
        tune_config=tune.TuneConfig(max_concurrent_trials=workers),
        run_config=tune.RunConfig(storage_path=tmp, verbose=0),
    )
    t0 = time.perf_counter()
    results = tuner.fit()
    elapsed = time.perf_counter() - t0
    assert len(results) == n and not results.errors, results.errors
    assert sorted(r.metrics["i"] for r in results) == list(range(n))
print(json.dumps({"seconds": elapsed}))
"""

_RAY_TASKS = _RAY_DRIVER + """
task = ray.remote(max_calls=1, num_cpus=1, max_retries=0)(trivial)
ray.get(task.remote({"i": -1}))  # the cluster is up and a worker has started once
t0 = time.perf_counter()
todo, pending, out = list(range(n)), [], []
while todo or pending:  # at most `workers` in flight, as the other rows
    while todo and len(pending) < workers:
        pending.append(task.remote({"i": todo.pop()}))
    ready, pending = ray.wait(pending, num_returns=1)
    out.extend(ray.get(ready))
elapsed = time.perf_counter() - t0
assert sorted(r["i"] for r in out) == list(range(n))
print(json.dumps({"seconds": elapsed}))
"""

_RAY_BACKEND = """
import json, sys, tempfile, time
from pathlib import Path
address, n, workers, workdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
import foldrunner
with tempfile.TemporaryDirectory() as tmp:
    spec = {
        "name": "bench", "entrypoint": "_trivial:fold", "workdir": workdir,
        "cv": {"folds": n}, "resources": {"gpus": "none", "workers": workers},
        "output": {"dir": str(Path(tmp) / "run")},
        "backend": "ray", "ray": {"address": address},
    }
    t0 = time.perf_counter()
    try:
        df = foldrunner.run(spec)
    except Exception as e:  # the Ray backend failed: the bench goes on
        print(json.dumps({"unavailable": f"{type(e).__name__}: {e}"[:600]}))
        sys.exit(0)
    elapsed = time.perf_counter() - t0
    ok = int((df["status"] == "ok").sum())
    if ok != n or len(df) != n:
        print(json.dumps({"unavailable": f"{ok} of {n} folds ok: {df['status'].value_counts().to_dict()}"}))
        sys.exit(0)
in_run = float(df["ended_at"].max() - df["started_at"].min())
print(json.dumps({"seconds": elapsed, "in_run": in_run,
                  "hosts": sorted(set(df["host"])), "nodes": int(df["node"].nunique()) if "node" in df else 0}))
"""

_RAY_TF = """
import json, statistics, sys, tempfile
from pathlib import Path
address, n, work, workdir = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
import foldrunner
with tempfile.TemporaryDirectory() as tmp:
    spec = {
        "name": "startup", "entrypoint": "_tf_fold:fold", "workdir": workdir,
        "preload": ["tensorflow"], "params": {"work": work}, "cv": {"folds": n},
        "resources": {"gpus": "none", "workers": 1, "spares": True},
        "env": {"TF_CPP_MIN_LOG_LEVEL": "3"}, "output": {"dir": str(Path(tmp) / "run")},
        "backend": "ray", "ray": {"address": address},
    }
    df = foldrunner.run(spec)
assert (df["status"] == "ok").all(), df[["status", "error"]].to_dict()
df = df.sort_values("started_at")
gaps = list(df["metric_first_line"].iloc[1:].values - df["ended_at"].iloc[:-1].values)
print(json.dumps({"gap": statistics.median(gaps), "nodes": sorted(set(df["node"]))}))
"""

_RAY_FLOOR = """
import json, statistics, sys, time
import ray
address, n = sys.argv[1], int(sys.argv[2])
ray.init(address=address, logging_level="ERROR", log_to_driver=False)

@ray.remote(num_cpus=1, max_retries=0)
def step():  # a fold that does nothing: its first line, then its end, as generator items
    yield time.time()
    yield time.time()

gaps, prev_end = [], None
for i in range(n + 3):  # one slot: the next task is submitted once the last one's end is in
    items = [ray.get(ref) for ref in step.remote()]
    if prev_end is not None and i >= 3:  # the first ones start the worker
        gaps.append(items[0] - prev_end)
    prev_end = items[1]
print(json.dumps({"gap": statistics.median(gaps)}))
"""


def _on_cluster(cluster, code: str, *args: object, timeout: float = 900) -> dict:
    out = cluster.run_driver(code, *map(str, args), timeout=timeout)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"driver failed (exit {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(lines[-1])


def ray_tune(cluster, n: int, workers: int) -> float:
    """Seconds for n trivial Ray Tune trials, ``workers`` at a time (ray.init excluded)."""
    return _on_cluster(cluster, _RAY_TUNE, n, workers)["seconds"]


def ray_tasks_max_calls_1(cluster, n: int, workers: int) -> float:
    """Seconds for n trivial Ray tasks, each in a worker that exits after it (max_calls=1),
    ``workers`` in flight (ray.init and the first worker's start excluded)."""
    return _on_cluster(cluster, _RAY_TASKS, n, workers)["seconds"]


def measure_ray_backend(cluster, n: int, workers: int) -> dict | str:
    """n trivial folds through ``foldrunner.run(spec with backend: ray, ray.address = the
    cluster)``: ``{"seconds": whole run, connecting and preflight included as in the local
    row, "in_run": first fold's start to last fold's end}``; or, where the run fails, why."""
    import subprocess

    try:
        out = _on_cluster(cluster, _RAY_BACKEND, n, workers, HERE, timeout=600)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return f"the run failed: {e}"[:800]
    return out if "seconds" in out else out.get("unavailable", "?")


def tf_idle_gaps(folds: int, work: float) -> tuple[float, float, float, float, float, list[str]]:
    """The idle gap of one slot between consecutive TensorFlow folds (bench_startup.py's
    measure: the previous fold's end to the next fold's first line), median: with local
    warm spares, and with the Ray backend on a remote node (a cluster whose head has no
    CPU, so every fold runs on the other node, warm spares kept by its helper), that node
    with 2 CPUs (the slot's next attempt can start beside the exiting one and wait there)
    and with 1 (it starts only once the previous attempt's task has returned its CPU);
    and, on each cluster, Ray's own floor for one task per fold: a bare task that does
    nothing, submitted as soon as the previous one's end reaches the driver."""
    from bench_startup import run_mode

    local = run_mode("warm spares", folds, work, True, "forkserver")["gap"]
    harness = load_harness()

    def on_a_remote_node(cpus: int) -> tuple[dict, float]:
        with harness.RayCluster(workers=1, gpus_per_node=0, head_cpus=0, cpus_per_node=cpus) as cluster:
            return (_on_cluster(cluster, _RAY_TF, folds, work, HERE, timeout=900),
                    _on_cluster(cluster, _RAY_FLOOR, 30)["gap"])

    out, floor = on_a_remote_node(2)
    full, full_floor = on_a_remote_node(1)
    return local, out["gap"], full["gap"], floor, full_floor, out["nodes"]


def ray_rows(args: argparse.Namespace, local_folds_per_s: float) -> None:
    harness = load_harness()
    why = harness.ray_available()
    if why is not None:
        print(f"--ray: {why}: no Ray comparison")
        return
    n, m, w = args.folds, args.ray_folds, args.workers
    with harness.RayCluster(workers=args.ray_nodes - 1) as cluster:
        print(f"Ray cluster: {len(cluster.nodes)} node(s) at {cluster.address}, "
              f"{cluster.cpus_per_node} CPUs each, started in {cluster.start_seconds:.1f}s")
        backend = measure_ray_backend(cluster, n, w)
        tune_s = ray_tune(cluster, m, w)
        tasks_s = ray_tasks_max_calls_1(cluster, m, w)
    print(f"  (cluster stopped in {cluster.stop_seconds:.2f}s)")
    local_in_run = n / min(IN_RUN[-args.repeat:])
    rates = {"foldrunner, local backend": (n, local_folds_per_s)}
    if isinstance(backend, dict):
        rates["foldrunner, Ray backend"] = (n, n / backend["seconds"])
    rates["Ray Tune, 1 trial per fold"] = (m, m / tune_s)
    rates["Ray tasks, max_calls=1"] = (m, m / tasks_s)
    print(f"trivial folds at {w} in flight, side by side on that cluster (whole runs, their start included):")
    for name, (count, rate) in rates.items():
        print(f"  {name:27}: {rate:7.2f} folds/s  {1000 / rate:7.1f} ms/fold  ({count} folds)")
    if not isinstance(backend, dict):
        print(f"  {'foldrunner, Ray backend':27}: not available ({backend})")
    local, tune_rate, tasks_rate = local_folds_per_s, m / tune_s, m / tasks_s
    print(f"  foldrunner local / Ray Tune   : {local / tune_rate:7.1f}x  (goal: >= 50x)")
    print(f"  foldrunner local / Ray tasks  : {local / tasks_rate:7.1f}x  (goal: >= 20x)")
    if isinstance(backend, dict):
        rb = n / backend["seconds"]
        rb_in = n / backend["in_run"]
        print(f"  Ray backend / Ray Tune        : {rb / tune_rate:7.1f}x  (goal: >= 10x)")
        print(f"  Ray backend / Ray tasks       : {rb / tasks_rate:7.1f}x")
        print(f"  Ray backend / local backend   : {rb / local:7.2f}   whole runs"
              f" (start: Ray {backend['seconds'] - backend['in_run']:.1f}s,"
              f" local {n / local - n / local_in_run:.1f}s)")
        print(f"  Ray backend / local backend   : {rb_in / local_in_run:7.2f}   in-run throughput, first"
              f" fold's start to last fold's end ({rb_in:.1f} against {local_in_run:.1f} folds/s;"
              f" goal: >= 0.5); folds ran on {backend.get('nodes', '?')} node(s)")
    if args.tf_folds:
        local_gap, ray_gap, full_gap, floor, full_floor, nodes = tf_idle_gaps(args.tf_folds, args.tf_work)
        print(f"TensorFlow folds, one slot, {args.tf_folds} folds of {args.tf_work:g}s (idle gap between"
              f" folds, median):")
        print(f"  local backend, warm spares    : {local_gap * 1000:7.0f} ms")
        print(f"  Ray backend, a remote node    : {ray_gap * 1000:7.0f} ms  (node {', '.join(n[:8] for n in nodes)})")
        print(f"  Ray remote / local            : {ray_gap / local_gap:7.2f}x  (goal: <= 2x)")
        print(f"  Ray's own floor, one bare task per fold on that node, submitted when the last"
              f" one's end is in: {floor * 1000:.0f} ms")
        print(f"  the same, the node's only CPU taken by the slot: Ray backend {full_gap * 1000:.0f} ms"
              f" ({full_gap / local_gap:.2f}x local), Ray's own floor {full_floor * 1000:.0f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ray", action="store_true",
                    help="also measure on a Ray cluster started on this machine (loopback only):"
                         " the Ray backend, Ray Tune and Ray tasks (needs ray[tune])")
    ap.add_argument("--ray-folds", type=int, default=40,
                    help="trials for Ray Tune and Ray tasks (they are slow); the Ray backend runs --folds")
    ap.add_argument("--ray-nodes", type=int, default=2,
                    help="nodes of that cluster: a head and N-1 workers, 2 CPUs each (default 2)")
    ap.add_argument("--tf-folds", type=int, default=6,
                    help="with --ray: TensorFlow folds for the idle-gap row, local warm spares against"
                         " a remote Ray node (0: skip it)")
    ap.add_argument("--tf-work", type=float, default=6.0, help="seconds of work of each TensorFlow fold")
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
    if args.ray:
        ray_rows(args, n / o)
    else:
        print("(--ray: the same against Ray Tune, Ray tasks and the Ray backend on a local cluster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
