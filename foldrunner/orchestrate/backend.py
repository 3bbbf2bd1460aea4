"""Which backend a run uses, and whether it can: checked before anything is launched.

``backend: local`` (the default) needs nothing: :func:`check_backend` returns at once and
never imports Ray. ``backend: ray`` (CONTRACT.md section 7) is refused, as a usage error
(exit 2, no traceback, nothing launched), when:

- an explicit GPU list is asked for (``resources.gpus: [0, 1]`` or ``--gpus 0,1``): Ray
  assigns each fold its GPU on its node;
- Ray is not installed: the message says what to install (``pip install 'foldrunner[ray]'``);
- ``ray.address`` is ``auto`` and no cluster is found (see :func:`find_auto_address`);
- nothing answers at the address: a TCP connect with a :data:`PROBE_TIMEOUT` timeout,
  where Ray's own connect would retry for many minutes;
- Ray is installed but its import fails (imported last: it takes a second or more).

``ray.address: local`` is always fine: the run starts a private Ray of its own.

For the backend: :func:`backend_of` is the backend a run uses (``--backend`` over the spec's),
:func:`ray_target` / :func:`resolve_address` the address it connects to (``None``: start a
private Ray, e.g. ``ray.init(address="local")``, which ignores ``RAY_ADDRESS``).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from foldrunner.config.fields import parse_host_port
from foldrunner.config.spec import Spec
from foldrunner.errors import UsageError

if TYPE_CHECKING:  # api imports this module; the options are only read here
    from foldrunner.orchestrate.api import RunOptions

__all__ = ["BACKENDS", "INSTALL_RAY", "PROBE_TIMEOUT", "RayTarget", "backend_of", "check_backend",
           "describe_backend", "find_auto_address", "probe_address", "ray_address_file",
           "ray_target", "resolve_address"]

Backend = Literal["local", "ray"]
BACKENDS: tuple[Backend, ...] = ("local", "ray")
INSTALL_RAY = "pip install 'foldrunner[ray]'"
"""What the message of a missing Ray tells the user to run."""
PROBE_TIMEOUT = 3.0
"""Seconds that the check of a ``HOST:PORT`` waits for a TCP connect (and its name lookup)."""
_PRIVATE = "ray.address: local for a private Ray on this machine"


@dataclass(frozen=True)
class RayTarget:
    """The Ray cluster a ray run connects to."""

    address: str | None
    """``HOST:PORT`` of the cluster's head (its GCS); None: start a private Ray for the run."""
    source: str
    """Where the address comes from, for messages: ``ray.address``, ``--address``,
    ``RAY_ADDRESS`` or Ray's address file (its path)."""
    namespace: str
    """``ray.namespace``."""


# ---------------------------------------------------------------- which backend, which address
def backend_of(spec: Spec, options: RunOptions | None = None) -> Backend:
    """The backend of the run: ``options.backend`` (``--backend``) over the spec's ``backend``."""
    chosen = options.backend if options is not None else None
    if chosen is None:
        return spec.backend
    if chosen in BACKENDS:
        return "local" if chosen == "local" else "ray"
    raise UsageError(f"--backend {chosen!r}: expected local or ray")


def ray_address_file() -> Path:
    """Where ``ray start --head`` records the address of the cluster it started (and
    ``ray stop`` removes it): ``$RAY_TMPDIR``, else ``$TMPDIR``, else ``/tmp``, then
    ``ray/ray_current_cluster``, as ``ray.init(address="auto")`` reads it."""
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(base) / "ray" / "ray_current_cluster"


def _checked(address: str, source: str) -> str:
    """``address`` (from ``source``) if it is ``HOST:PORT``; a UsageError naming both if not."""
    try:
        parse_host_port(address)
    except ValueError as exc:
        raise UsageError(f"{source}: {exc}") from None
    return address.strip()


def find_auto_address() -> tuple[str | None, str] | None:
    """What ``ray.address: auto`` means now, as ``(address, source)``; None if no cluster is found.

    In Ray's order: ``RAY_ADDRESS`` when it is set and not ``auto`` (``local`` there means a
    private Ray: address None); else the address file of ``ray start --head``
    (:func:`ray_address_file`). Unlike ``ray.init(address="auto")``, a Ray found only among
    this machine's processes (a private cluster of another program) is not used. Raises
    UsageError for a malformed ``RAY_ADDRESS`` or address file.
    """
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env == "local":
        return None, "RAY_ADDRESS"
    if env and env != "auto":
        return _checked(env, f"RAY_ADDRESS={env!r}"), "RAY_ADDRESS"
    path = ray_address_file()
    try:
        recorded = path.read_text(encoding="utf-8").strip()
    except OSError:
        recorded = ""
    if recorded:
        source = f"Ray's address file {path}"
        return _checked(recorded, f"{source} ({recorded!r})"), source
    return None


def ray_target(spec: Spec, options: RunOptions | None = None) -> RayTarget:
    """The cluster a ray run connects to: ``--address`` over ``ray.address``, with ``auto``
    resolved (:func:`find_auto_address`). Raises UsageError when the address is malformed or
    ``auto`` finds no cluster. Reads files and the environment; connects to nothing."""
    given = options.address if options is not None else None
    value, source = (given.strip(), "--address") if given is not None else (spec.ray.address, "ray.address")
    namespace = spec.ray.namespace
    if value == "local":
        return RayTarget(None, source, namespace)
    if value != "auto":
        return RayTarget(_checked(value, f"{source} {value!r}"), source, namespace)
    found = find_auto_address()
    if found is None:
        raise UsageError(
            f"no Ray cluster to connect to: {source} is auto, RAY_ADDRESS is not set and no Ray"
            f" was started on this machine ({ray_address_file()}, written by `ray start --head`,"
            " does not exist). Give the head node's address (--address HOST:PORT or ray.address:"
            f" HOST:PORT), start a cluster (`ray start --head`), or use {_PRIVATE}"
        )
    return RayTarget(found[0], f"{found[1]}; {source} is auto", namespace)


def resolve_address(spec: Spec, options: RunOptions | None = None) -> str | None:
    """The ``HOST:PORT`` a ray run connects to, or None to start a private Ray
    (``ray.address: local``); see :func:`ray_target`."""
    return ray_target(spec, options).address


# ---------------------------------------------------------------- the checks
def probe_address(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None if something accepts a TCP connection at ``host:port`` within ``timeout``
    seconds (name lookup included); else why not, in words."""
    deadline = time.monotonic() + timeout
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            outcome.append(f"cannot resolve the host name {host!r} ({exc.strerror or exc})")
            return
        why = f"no answer within {timeout:g}s"
        for family, kind, proto, _, sockaddr in infos:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(left)
                try:
                    sock.connect(sockaddr)
                except socket.timeout:
                    why = f"no answer within {timeout:g}s"
                except ConnectionRefusedError:
                    why = "connection refused: nothing listens there"
                except OSError as exc:
                    why = exc.strerror or str(exc)
                else:
                    outcome.append(None)
                    return
        outcome.append(why)

    # in a thread: a name lookup has no timeout of its own
    thread = threading.Thread(target=attempt, name="foldrunner-ray-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return outcome[0] if outcome else f"no answer within {timeout:g}s (looking up {host!r})"


def _ray_installed() -> bool:
    """Whether ``import ray`` can find Ray, without importing it (a second or more)."""
    try:
        return importlib.util.find_spec("ray") is not None  # None also for sys.modules["ray"] = None
    except (ImportError, ValueError):  # a module without a spec in sys.modules: let the import say
        return True


def _not_installed(detail: str = "") -> UsageError:
    return UsageError(f"backend ray needs Ray, which is not installed in this Python"
                      f" ({sys.executable}){detail}: install it with {INSTALL_RAY}")


def _import_ray() -> None:
    import ray  # noqa: F401


def _check_ray_importable() -> None:
    try:
        _import_ray()
    except ImportError as exc:
        if exc.name == "ray":
            raise _not_installed(f" ({exc})") from None
        raise UsageError(f"backend ray: Ray is installed but cannot be imported: {exc};"
                         f" reinstall it with {INSTALL_RAY}") from None
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything at import
        raise UsageError(f"backend ray: Ray is installed but cannot be imported:"
                         f" {type(exc).__name__}: {exc}; reinstall it with {INSTALL_RAY}") from None


def _check_gpus(spec: Spec, options: RunOptions | None) -> None:
    asked = options.gpus if options is not None else None
    why = "Ray assigns each fold its GPU on its node: use auto (the GPUs Ray assigns) or none"
    if isinstance(asked, list):
        shown = ",".join(str(i) for i in asked)
        raise UsageError(f"--gpus {shown}: an explicit list of GPUs cannot be used with backend"
                         f" ray; {why}")
    if asked is None and isinstance(spec.resources.gpus, list):  # the spec's own `backend: ray`
        # refuses this when it is loaded: here the backend is --backend ray
        raise UsageError(f"resources.gpus: an explicit list of GPUs ({spec.resources.gpus}) cannot"
                         f" be used with --backend ray; {why} (e.g. -o resources.gpus=auto)")


def check_backend(spec: Spec, options: RunOptions | None = None) -> None:
    """Refuse, with a UsageError (exit 2), a run whose backend cannot work; before anything
    is launched. The local backend needs nothing (an ``--address`` without the ray backend is
    refused); the ray backend is checked as the module says, in that order."""
    backend = backend_of(spec, options)
    address = options.address if options is not None else None
    if backend == "local":
        if address is not None:
            raise UsageError(f"--address {address}: an address is for the ray backend, and this"
                             " run's backend is local: add --backend ray (or set backend: ray)")
        return
    _check_gpus(spec, options)
    if address is not None and address.strip() not in ("auto", "local"):
        _checked(address, f"--address {address.strip()!r}")
    if not _ray_installed():
        raise _not_installed()
    target = ray_target(spec, options)
    if target.address is not None:  # before importing Ray, which takes a second or more
        host, port = parse_host_port(target.address)
        why = probe_address(host, port)
        if why is not None:
            raise UsageError(
                f"cannot reach the Ray cluster at {target.address} (from {target.source}): {why}."
                f" Start Ray there (`ray start --head --port={port}` on the head node), correct"
                f" the address, or use {_PRIVATE}"
            )
    _check_ray_importable()


def describe_backend(spec: Spec) -> str:
    """``backend local`` or ``backend ray at ...`` for ``foldrunner plan``; connects to nothing."""
    if spec.backend == "local":
        return "backend local"
    address = spec.ray.address
    if address == "local":
        return "backend ray at local (a private Ray on this machine)"
    if address != "auto":
        return f"backend ray at {address}"
    try:
        found = find_auto_address()
    except UsageError:
        return "backend ray at auto (no usable address found now)"
    if found is None:
        return "backend ray at auto (no cluster found now)"
    shown = found[0] or "local (a private Ray on this machine)"
    return f"backend ray at auto ({shown}, from {found[1]})"

