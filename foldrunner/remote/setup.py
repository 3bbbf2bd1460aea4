"""A run's Ray backend: connected to its cluster, its slots, its launcher."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from foldrunner.config.spec import Spec
from foldrunner.gpu.inventory import Slot
from foldrunner.remote.cluster import cluster_resources, connected
from foldrunner.remote.driver import RayBackend
from foldrunner.remote.node import NodeSettings
from foldrunner.store.paths import RunPaths


@dataclass
class RayRun:
    """What the orchestrator needs of the cluster: folds in flight and a backend maker."""

    slots: list[Slot]
    make: Callable[[str, str], RayBackend]
    """``make(run_id, run_token)``: the backend of this run."""


@contextmanager
def ray_run(s: Spec, address: str | None, namespace: str, workers: int | None, start_method: str,
            paths: RunPaths, notes: Callable[[str], None]) -> Iterator[RayRun]:
    """Connect to the cluster (``address`` None: a private one) for the run's length.

    Folds in flight: ``workers``, else the cluster's CPUs over ``ray.cpus_per_fold`` (with
    GPUs, no more than its GPUs times ``per_gpu``, so that no fold waits in Ray's queue while
    its clock runs). Each fold asks Ray for ``ray.cpus_per_fold`` CPUs, and for ``1 /
    per_gpu`` GPU with ``gpus: auto`` on a cluster with GPUs.
    """
    with connected(address or "local", namespace, str(s.workdir), paths.root) as _:
        cpus, gpus = cluster_resources()
        per_gpu, cpus_per_fold = s.resources.per_gpu, s.ray.cpus_per_fold
        use_gpus = s.resources.gpus == "auto" and gpus > 0
        capacity = max(1, math.floor(cpus / cpus_per_fold))
        if use_gpus:
            capacity = min(capacity, max(1, math.floor(gpus * per_gpu)))
        n = workers if workers is not None else capacity
        where = address or "a private Ray on this machine"
        notes(f"ray: {where}: {cpus} CPUs, {gpus:g} GPUs; up to {n} folds in flight"
              + (f", {cpus_per_fold:g} CPUs each" if cpus_per_fold != 1 else "")
              + (f", each on 1/{per_gpu} of a GPU" if use_gpus and per_gpu > 1 else
                 ", each on its own GPU" if use_gpus else ""))

        def make(run_id: str, run_token: str) -> RayBackend:
            settings = NodeSettings(run_id=run_id, run_token=run_token, namespace=namespace,
                                    env=dict(s.env), workdir=str(s.workdir),
                                    grace=s.limits.grace, start_method=start_method,
                                    spares=s.resources.spares, preload=tuple(s.preload),
                                    per_gpu=per_gpu, gpus=use_gpus, cpus_per_fold=cpus_per_fold,
                                    workers=n)
            adaptive = s.search is not None and s.search.optuna is not None
            return RayBackend(settings, gpus_per_fold=1.0 / per_gpu if use_gpus else 0.0,
                              cpus_per_fold=cpus_per_fold, handover=not adaptive)

        yield RayRun([Slot(i) for i in range(n)], make)
