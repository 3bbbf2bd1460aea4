"""Connecting the driver to its Ray cluster, and the private cluster of ``address: local``.

Nothing foldrunner starts talks to anything off this machine: usage statistics are off
(and pointed at a closed local port), and a private cluster is told it is on a local
provider, so that it never probes a cloud's metadata address.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
    "RAY_AUTH_MODE": "disabled",
}
"""Set in the driver (and so in every Ray process it starts): no usage reports."""
BOOTSTRAP_CONFIG = "provider: {type: local}\n"
"""``HOME/ray_bootstrap_config.yaml`` of a private cluster: Ray then skips the cloud
metadata probe."""
PRIVATE_NODE_IP = "127.0.0.2"
"""The private cluster's address: loopback, but not 127.0.0.1 (which Ray rewrites into
the machine's outward address)."""
PRIVATE_OBJECT_STORE = 100 * 1024 * 1024
"""Bytes of object store of a private cluster (results and logs are small)."""


@contextmanager
def connected(address: str, namespace: str, workdir: str, run_dir: Path,
              cpus: int | None = None) -> Iterator[Any]:
    """``ray.init`` for one run, ``ray.shutdown`` after it; yields the ``ray`` module.

    ``address`` is ``HOST:PORT``, ``auto`` (as Ray finds it) or ``local`` (a private
    cluster on this machine for the run). The run's ``workdir`` reaches the nodes
    through Ray's runtime environment (without the run dir when it lies inside).
    """
    import ray

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    runtime_env: dict[str, Any] = {"working_dir": workdir}
    try:
        rel = run_dir.resolve().relative_to(Path(workdir).resolve())
        runtime_env["excludes"] = [f"/{rel.as_posix()}"]
    except ValueError:
        pass
    kw: dict[str, Any] = dict(namespace=namespace, runtime_env=runtime_env, log_to_driver=False,
                              configure_logging=False)
    if address == "local":
        with _private_home():
            ray.init(address="local", include_dashboard=False, num_cpus=cpus,
                     _node_ip_address=PRIVATE_NODE_IP, object_store_memory=PRIVATE_OBJECT_STORE,
                     **kw)
    else:
        ray.init(address=address, **kw)
    try:
        yield ray
    finally:
        ray.shutdown()


@contextmanager
def _private_home() -> Iterator[None]:
    """``HOME`` of the processes a private cluster starts: one that says the provider is
    local (Ray then skips the cloud metadata probe)."""
    home = Path(tempfile.mkdtemp(prefix="foldrunner-ray-home-"))
    (home / "ray_bootstrap_config.yaml").write_text(BOOTSTRAP_CONFIG)
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old


def cluster_resources() -> tuple[int, float]:
    """``(CPUs, GPUs)`` of the cluster the driver is connected to."""
    import ray

    res = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return int(res.get("CPU", 0)), float(res.get("GPU", 0.0))
