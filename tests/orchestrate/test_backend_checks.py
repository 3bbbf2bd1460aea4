"""The checks of the backend before anything is launched (foldrunner/orchestrate/backend.py):
which backend and which Ray address a run uses, and the refusals (exit 2) of a ray run that
cannot work. In-process, with the import of Ray stubbed where it would be slow; nothing here
starts a Ray process or connects to one."""

from __future__ import annotations

import importlib.util
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from foldrunner.config.spec import Spec, load_spec
from foldrunner.errors import UsageError
from foldrunner.orchestrate import backend as bk
from foldrunner.orchestrate.api import RunOptions
from foldrunner.orchestrate.backend import (INSTALL_RAY, RayTarget, backend_of, check_backend,
                                            describe_backend, find_auto_address, probe_address,
                                            ray_address_file, ray_target, resolve_address)

pytestmark = pytest.mark.timeout(30)


def spec(**over: Any) -> Spec:
    return load_spec({"name": "t", "entrypoint": "m:f"}, over)


@pytest.fixture(autouse=True)
def no_ray_around(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No RAY_ADDRESS, and Ray's temp dir an empty one of this test: `auto` finds nothing
    unless the test puts it there."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_tmp = tmp_path / "raytmp"
    ray_tmp.mkdir()
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    return ray_tmp


@pytest.fixture
def ray_importable(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Ray found and its import stubbed as a success; counts the imports."""
    calls: list[int] = []
    monkeypatch.setattr(bk, "_ray_installed", lambda: True)
    monkeypatch.setattr(bk, "_import_ray", lambda: calls.append(1))
    return calls


@pytest.fixture
def listening() -> Iterator[str]:
    """HOST:PORT of a socket that listens (and is no Ray)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"127.0.0.1:{server.getsockname()[1]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refusal(s: Spec, options: RunOptions | None = None) -> str:
    with pytest.raises(UsageError) as info:
        check_backend(s, options)
    assert info.value.exit_code == 2
    return str(info.value)


# ---------------------------------------------------------------- which backend
def test_backend_of() -> None:
    assert backend_of(spec()) == "local"
    assert backend_of(spec(backend="ray")) == "ray"
    assert backend_of(spec(), RunOptions(backend="ray")) == "ray"
    assert backend_of(spec(backend="ray"), RunOptions(backend="local")) == "local"
    assert backend_of(spec(backend="ray"), RunOptions()) == "ray"
    with pytest.raises(UsageError, match="--backend 'slurm': expected local or ray"):
        backend_of(spec(), RunOptions(backend="slurm"))


def test_local_needs_nothing_and_never_imports_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise AssertionError("the local backend imported ray")

    monkeypatch.setattr(bk, "_import_ray", boom)
    monkeypatch.setattr(bk, "_ray_installed", boom)
    monkeypatch.setattr(bk, "probe_address", lambda *a: pytest.fail("the local backend probed"))
    check_backend(spec())
    check_backend(spec(), RunOptions())
    check_backend(spec(**{"resources.gpus": [0, 1]}), RunOptions(gpus=[0, 1], workers=3))
    check_backend(spec(backend="ray"), RunOptions(backend="local", gpus=[0, 1]))


def test_an_address_without_the_ray_backend_is_refused() -> None:
    assert refusal(spec(), RunOptions(address="10.0.0.5:6379")) == (
        "--address 10.0.0.5:6379: an address is for the ray backend, and this run's backend is"
        " local: add --backend ray (or set backend: ray)")


# ---------------------------------------------------------------- GPUs
GPUS_WHY = "Ray assigns each fold its GPU on its node: use auto (the GPUs Ray assigns) or none"


def test_gpu_list_on_the_command_line_is_refused_with_ray(ray_importable: list[int]) -> None:
    assert refusal(spec(backend="ray"), RunOptions(gpus=[0, 1])) == (
        f"--gpus 0,1: an explicit list of GPUs cannot be used with backend ray; {GPUS_WHY}")
    assert refusal(spec(), RunOptions(backend="ray", gpus=[2])).startswith("--gpus 2: ")
    assert not ray_importable  # refused before Ray is imported


def test_gpu_list_of_the_spec_is_refused_with_backend_ray_from_options(ray_importable: list[int]) -> None:
    assert refusal(spec(**{"resources.gpus": [0, 1]}), RunOptions(backend="ray")) == (
        "resources.gpus: an explicit list of GPUs ([0, 1]) cannot be used with --backend ray;"
        f" {GPUS_WHY} (e.g. -o resources.gpus=auto)")


@pytest.mark.parametrize("gpus", ["auto", "none"])
def test_gpus_auto_or_none_are_fine_with_ray(gpus: str, ray_importable: list[int], listening: str) -> None:
    check_backend(spec(backend="ray", **{"ray.address": listening}), RunOptions(gpus=gpus))
    # --gpus auto replaces the spec's list
    check_backend(spec(**{"resources.gpus": [0, 1], "ray.address": listening}),
                  RunOptions(backend="ray", gpus=gpus))


# ---------------------------------------------------------------- Ray not importable
def _raise(exc: BaseException) -> Any:
    def fail() -> None:
        raise exc
    return fail


def test_ray_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bk, "_ray_installed", lambda: False)
    monkeypatch.setattr(bk, "probe_address", lambda *a: pytest.fail("probed without Ray"))
    for address in ("local", "auto", "10.0.0.5:6379"):
        assert refusal(spec(backend="ray", **{"ray.address": address})) == (
            f"backend ray needs Ray, which is not installed in this Python ({sys.executable}):"
            f" install it with {INSTALL_RAY}")
    assert INSTALL_RAY == "pip install 'foldrunner[ray]'"


def test_ray_found_but_its_import_says_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bk, "_ray_installed", lambda: True)
    monkeypatch.setattr(bk, "_import_ray", _raise(ModuleNotFoundError("No module named 'ray'", name="ray")))
    assert refusal(spec(backend="ray", **{"ray.address": "local"})) == (
        f"backend ray needs Ray, which is not installed in this Python ({sys.executable})"
        f" (No module named 'ray'): install it with {INSTALL_RAY}")


def test_ray_installed_is_found_without_importing_it() -> None:
    assert bk._ray_installed() is ("ray" in sys.modules or importlib.util.find_spec("ray") is not None)
    assert "ray" not in sys.modules or sys.modules["ray"] is not None


@pytest.mark.parametrize("exc, shown", [
    (ModuleNotFoundError("No module named 'msgpack'", name="msgpack"), "No module named 'msgpack'"),
    (ImportError("libfoo.so: cannot open shared object file", name="ray._raylet"),
     "libfoo.so: cannot open shared object file"),
    (RuntimeError("version clash"), "RuntimeError: version clash"),
])
def test_ray_installed_but_broken(monkeypatch: pytest.MonkeyPatch, exc: Exception, shown: str) -> None:
    monkeypatch.setattr(bk, "_ray_installed", lambda: True)
    monkeypatch.setattr(bk, "_import_ray", _raise(exc))
    assert refusal(spec(backend="ray", **{"ray.address": "local"})) == (
        f"backend ray: Ray is installed but cannot be imported: {shown}; reinstall it with {INSTALL_RAY}")


# ---------------------------------------------------------------- the address
def test_explicit_addresses(ray_importable: list[int]) -> None:
    s = spec(backend="ray", **{"ray.address": "10.0.0.5:6379", "ray.namespace": "ns"})
    assert ray_target(s) == RayTarget("10.0.0.5:6379", "ray.address", "ns")
    assert ray_target(s, RunOptions(address="head:7000")) == RayTarget("head:7000", "--address", "ns")
    assert resolve_address(s, RunOptions(address="local")) is None
    assert resolve_address(spec(backend="ray", **{"ray.address": "local"})) is None
    check_backend(spec(backend="ray", **{"ray.address": "local"}))  # a private Ray: always fine
    assert ray_importable == [1]


def test_a_malformed_address_option_is_refused(ray_importable: list[int]) -> None:
    assert refusal(spec(backend="ray"), RunOptions(address="head")) == (
        "--address 'head': invalid address 'head': the port is missing, e.g. head:6379 (Ray's default)")
    assert "is a URL" in refusal(spec(backend="ray"), RunOptions(address="ray://head:10001"))
    assert not ray_importable


def test_ray_address_file_follows_rays_temp_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert ray_address_file() == tmp_path / "raytmp" / "ray" / "ray_current_cluster"
    monkeypatch.delenv("RAY_TMPDIR")
    monkeypatch.setenv("TMPDIR", "/var/tmp/x")
    assert ray_address_file() == Path("/var/tmp/x/ray/ray_current_cluster")
    monkeypatch.delenv("TMPDIR")
    assert ray_address_file() == Path("/tmp/ray/ray_current_cluster")


def test_auto_finds_nothing(ray_importable: list[int], tmp_path: Path) -> None:
    assert find_auto_address() is None
    message = refusal(spec(backend="ray"))
    assert message == (
        "no Ray cluster to connect to: ray.address is auto, RAY_ADDRESS is not set and no Ray was"
        f" started on this machine ({tmp_path / 'raytmp' / 'ray' / 'ray_current_cluster'},"
        " written by `ray start --head`, does not exist). Give the head node's address (--address"
        " HOST:PORT or ray.address: HOST:PORT), start a cluster (`ray start --head`), or use"
        " ray.address: local for a private Ray on this machine")
    assert refusal(spec(backend="ray"), RunOptions(address="auto")).startswith(
        "no Ray cluster to connect to: --address is auto,")


def test_auto_reads_ray_address(monkeypatch: pytest.MonkeyPatch, no_ray_around: Path) -> None:
    (no_ray_around / "ray").mkdir()
    (no_ray_around / "ray" / "ray_current_cluster").write_text("10.9.9.9:6379\n")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # the environment first
    s = spec(backend="ray")
    assert ray_target(s) == RayTarget("10.0.0.5:6379", "RAY_ADDRESS; ray.address is auto", "foldrunner")
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert resolve_address(s) is None
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # means: look further
    assert resolve_address(s) == "10.9.9.9:6379"
    monkeypatch.setenv("RAY_ADDRESS", "nonsense")
    with pytest.raises(UsageError, match=r"^RAY_ADDRESS='nonsense': invalid address 'nonsense': the port is missing"):
        resolve_address(s)
    # an explicit address is not replaced by RAY_ADDRESS
    assert resolve_address(spec(backend="ray", **{"ray.address": "h:1"})) == "h:1"


def test_auto_reads_the_address_file(no_ray_around: Path) -> None:
    path = no_ray_around / "ray" / "ray_current_cluster"
    path.parent.mkdir()
    path.write_text("10.9.9.9:6379\n")
    assert find_auto_address() == ("10.9.9.9:6379", f"Ray's address file {path}")
    assert ray_target(spec(backend="ray")).source == f"Ray's address file {path}; ray.address is auto"
    path.write_text("garbage")
    with pytest.raises(UsageError, match=r"Ray's address file .* \('garbage'\): invalid address"):
        find_auto_address()
    path.write_text("")
    assert find_auto_address() is None


def test_nothing_listens_at_the_address(ray_importable: list[int]) -> None:
    port = free_port()
    started = time.monotonic()
    message = refusal(spec(backend="ray", **{"ray.address": f"127.0.0.1:{port}"}))
    assert time.monotonic() - started < 1.0  # refused at once
    assert not ray_importable  # before the slow import of Ray
    assert message == (
        f"cannot reach the Ray cluster at 127.0.0.1:{port} (from ray.address): connection refused:"
        f" nothing listens there. Start Ray there (`ray start --head --port={port}` on the head"
        " node), correct the address, or use ray.address: local for a private Ray on this machine")


def test_nothing_listens_at_ray_address_from_the_environment(
        ray_importable: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    assert refusal(spec(backend="ray")).startswith(
        f"cannot reach the Ray cluster at 127.0.0.1:{port} (from RAY_ADDRESS; ray.address is auto):")


def test_something_listens(ray_importable: list[int], listening: str) -> None:
    check_backend(spec(backend="ray", **{"ray.address": listening}))
    check_backend(spec(), RunOptions(backend="ray", address=listening))
    assert ray_importable == [1, 1]


def test_probe_address(listening: str) -> None:
    host, port = listening.split(":")
    assert probe_address(host, int(port)) is None
    assert probe_address("127.0.0.1", free_port()) == "connection refused: nothing listens there"
    started = time.monotonic()
    why = probe_address("no-such-host.invalid", 6379, timeout=2.0)
    assert time.monotonic() - started < 3.0
    assert why is not None and ("cannot resolve the host name 'no-such-host.invalid'" in why
                                or "no answer within 2s" in why)


def test_probe_address_times_out_on_a_silent_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name lookup that hangs is given up after the timeout."""
    def silent(*args: Any, **kwargs: Any) -> Any:
        time.sleep(3)
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(bk.socket, "getaddrinfo", silent)
    started = time.monotonic()
    assert probe_address("slow.example", 6379, timeout=0.5) == (
        "no answer within 0.5s (looking up 'slow.example')")
    assert time.monotonic() - started < 1.5


def test_describe_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    assert describe_backend(spec()) == "backend local"
    assert describe_backend(spec(backend="ray", **{"ray.address": "h:1"})) == "backend ray at h:1"
    assert describe_backend(spec(backend="ray", **{"ray.address": "local"})) == (
        "backend ray at local (a private Ray on this machine)")
    assert describe_backend(spec(backend="ray")) == "backend ray at auto (no cluster found now)"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert describe_backend(spec(backend="ray")) == (
        "backend ray at auto (10.0.0.5:6379, from RAY_ADDRESS)")
    monkeypatch.setenv("RAY_ADDRESS", "junk")
    assert describe_backend(spec(backend="ray")) == "backend ray at auto (no usable address found now)"
