"""Before any fold: the entry point is imported once in a child process of its own.

A spec whose entry point cannot be imported (a typo, a missing module, an exception at
import time) fails here, with the child's traceback, instead of as every fold's error.
An ``entrypoint=`` callable is pickled with dill here too, so that one that cannot be sent
to a fold is refused before anything runs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from multiprocess.connection import wait

from foldrunner.child.task import ChildTask
from foldrunner.config.spec import Spec
from foldrunner.defaults import Timing
from foldrunner.errors import PreflightError
from foldrunner.launch.launcher import start_child
from foldrunner.procs import proctree
from foldrunner.procs.terminate import end_now
from foldrunner.store.paths import RunPaths
from foldrunner.wire.framing import read_messages
from foldrunner.wire.messages import Result
from foldrunner.wire.outcome import ChildOutcome, Status


def preflight(spec: Spec, paths: RunPaths, entry_blob: bytes | None, start_method: str) -> None:
    """Import the entry point once in a child process; raise PreflightError if it fails."""
    log_path = paths.preflight_log
    task = ChildTask(
        fold_id="preflight", trial=0, replicate=0, fold=0, folds=spec.cv.folds, seed=spec.cv.seed,
        attempt=1, params=dict(spec.params), gpu=None, run_dir=str(paths.root),
        log_path=str(log_path), workdir=str(spec.workdir), entrypoint=spec.entrypoint,
        entrypoint_blob=entry_blob, env=dict(spec.env), marker=f"preflight/{uuid.uuid4().hex[:8]}",
        preflight=True,
    )
    child = start_child(task, start_method)
    buf = bytearray()
    outcome: ChildOutcome | None = None
    deadline = time.monotonic() + Timing.PREFLIGHT_TIMEOUT
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready = wait([child.fd, child.sentinel], left)
            if child.fd in ready or child.sentinel in ready:
                for message in read_messages(child.fd, buf)[0]:
                    if isinstance(message, Result):
                        outcome = message.outcome
            if child.sentinel in ready:
                break
    finally:
        # nothing of it is needed: the one termination path, at once
        end_now(proctree.marked_processes(task.marker), [child.pid], grace=0.0,
                label="the preflight", marker=task.marker, keep=[child.pid])
        child.process.join(Timing.REAP_WAIT)
        code = child.process.exitcode
        child.close()
    where = f"entrypoint {spec.entrypoint!r} (workdir {spec.workdir})"
    if timed_out:
        raise PreflightError(
            f"{where}: importing it took longer than {Timing.PREFLIGHT_TIMEOUT:g}s; see {log_path}"
        )
    if outcome is None:
        how = proctree.describe_exit(code)
        raise PreflightError(f"{where}: the process importing it {how}; see {log_path}")
    if outcome.status is not Status.OK:
        tail = outcome.traceback.strip().splitlines()[-6:]
        detail = "\n".join("    " + line for line in tail)
        raise PreflightError(
            f"{where}: cannot load it: {outcome.error_type}: {outcome.error}\n{detail}"
        )


def dill_entrypoint(fn: Callable[..., Any]) -> bytes:
    """``fn`` pickled with dill (by value, with what it refers to), as each fold gets it;
    a PreflightError when dill cannot."""
    import dill

    try:
        return bytes(dill.dumps(fn, recurse=True))
    except Exception as exc:  # noqa: BLE001 - any serialization failure is a usage error
        raise PreflightError(f"entrypoint= {fn!r} cannot be sent to a fold with dill: {exc}") from exc
