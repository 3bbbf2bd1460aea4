"""Ray tests: a real cluster on loopback (tests/ray_cluster.py), skipped without ray.

Every test in this folder is marked ``ray`` (``-m "not ray"`` leaves them out) and is
skipped, with the reason, when ray is not installed. ``ray_cluster`` is a head and one
worker node, 2 CPUs and 2 logical GPUs each, shared by the tests of a module and stopped
(every process of it checked gone) when the module ends.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ray_cluster import RayCluster, ray_available

HERE = Path(__file__).parent
WHY_NOT = ray_available()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ray: needs ray and starts a Ray cluster on this machine")
    # Test modules say `from conftest import FOLDS, base_spec, ...` and mean tests/conftest.py.
    # Importing this file took the name "conftest" in sys.modules (pytest drops the old entry
    # first); give it back, or every test module imported after this folder's conftest (here
    # and in the folders collected after tests/ray) would get this file instead.
    root = (HERE.parent / "conftest.py").resolve()
    for plugin in config.pluginmanager.get_plugins():
        path = getattr(plugin, "__file__", None)
        if path and Path(path).resolve() == root:
            sys.modules["conftest"] = plugin
            break


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.ray)
            if WHY_NOT is not None:
                item.add_marker(pytest.mark.skip(reason=f"Ray tests: {WHY_NOT}"))


@pytest.fixture(scope="module")
def ray_cluster():
    """A head and one worker node (2 CPUs, 2 logical GPUs each) for this module's tests."""
    if WHY_NOT is not None:
        pytest.skip(f"Ray tests: {WHY_NOT}")
    with RayCluster(workers=1, gpus_per_node=2, cpus_per_node=2) as cluster:
        yield cluster

