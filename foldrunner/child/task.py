"""One attempt as the child sees it: the task it is sent, and running its entry point.

:func:`run_task` imports the entry point (or loads the dill blob), calls it with a
:class:`~foldrunner.child.context.FoldContext` and turns whatever happens into a
:class:`~foldrunner.wire.outcome.ChildOutcome`: it never raises but ``SystemExit``.

Imported by every fold's process: keep it free of heavy imports (dill is imported only
for a task that carries a callable).
"""

from __future__ import annotations

import importlib
import resource
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from foldrunner.child.context import FoldContext, check_metrics
from foldrunner.wire.messages import FoldMessage
from foldrunner.wire.outcome import ChildOutcome, Status

MARKER_ENV = "FOLDRUNNER_FOLD"
"""The environment variable every process of a fold inherits: ``<run token>/<fold id>/<attempt>``
(``<run token>/spare/<slot>/<n>`` for a warm spare)."""

MEMORY_ERROR_NAMES = frozenset({"MemoryError", "ResourceExhaustedError", "OutOfMemoryError"})
"""Exception type names that mean the fold ran out of memory."""


@dataclass
class ChildTask:
    """Everything one attempt needs, sent to the child as one pickled object."""

    fold_id: str
    trial: int
    replicate: int
    fold: int
    folds: int
    seed: int
    attempt: int
    params: dict[str, Any]
    gpu: int | None
    run_dir: str
    log_path: str
    workdir: str
    entrypoint: str
    """``module:function``; ignored when ``entrypoint_blob`` is set."""
    entrypoint_blob: bytes | None = None
    """A callable serialized with dill (``foldrunner.run(..., entrypoint=f)``)."""
    env: dict[str, str] = field(default_factory=dict)
    marker: str = ""
    preflight: bool = False
    """Only import the entry point and check that it is callable; do not call it."""
    grace: float = 10.0
    """``limits.grace``: what the fold's descendants get if the orchestrator dies."""


@dataclass
class SpareInit:
    """What a warm spare needs before its fold is known: its slot's GPU and the preloads."""

    gpu: int | None
    env: dict[str, str]
    workdir: str
    preload: list[str]
    log_path: str
    marker: str
    grace: float = 10.0


def resolve_entrypoint(task: ChildTask) -> Callable[..., Any]:
    """Import ``module:function`` (or load the dill blob) and check it is callable."""
    if task.entrypoint_blob is not None:
        import dill

        fn = dill.loads(task.entrypoint_blob)
        name = getattr(fn, "__qualname__", repr(fn))
    else:
        module_name, _, attr = task.entrypoint.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise AttributeError(
                    f"module {module_name!r} has no attribute {attr!r}"
                    f" (from {getattr(sys.modules[module_name], '__file__', '?')})"
                ) from None
        fn, name = obj, task.entrypoint
    if not callable(fn):
        raise TypeError(f"entry point {name} is a {type(fn).__name__}, not a callable")
    return fn  # type: ignore[no-any-return]


def _is_memory_error(exc: BaseException) -> bool:
    """``MemoryError``, TensorFlow's ``ResourceExhaustedError`` (by name), or one of them
    as the cause of what was raised."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if any(c.__name__ in MEMORY_ERROR_NAMES for c in type(e).__mro__):
            return True
        e = e.__cause__ or e.__context__
    return False


def _error_outcome(exc: BaseException, started: float) -> ChildOutcome:
    name = type(exc).__name__
    return ChildOutcome(
        status=Status.ERROR,
        error_type=name,
        error=str(exc),
        traceback="".join(traceback.format_exception(exc)),
        memory_error=_is_memory_error(exc),
        started_at=started,
        ended_at=time.time(),
    )


def maxrss_kb() -> int:
    """This process's peak RSS, or its waited-for children's if larger (``ru_maxrss``)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return int(max(own, kids))


def run_task(task: ChildTask, send: Callable[[FoldMessage], None]) -> ChildOutcome:
    """Run the entry point of ``task``; return its outcome (raises only ``SystemExit``)."""
    started = time.time()
    try:
        fn = resolve_entrypoint(task)
        if task.preflight:
            return ChildOutcome(status=Status.OK, started_at=started, ended_at=time.time())
        ctx = FoldContext(
            params=dict(task.params),
            trial=task.trial,
            fold=task.fold,
            folds=task.folds,
            replicate=task.replicate,
            seed=task.seed,
            attempt=task.attempt,
            gpu=task.gpu,
            run_dir=Path(task.run_dir),
            fold_id=task.fold_id,
            log_path=Path(task.log_path),
            _send=send,
        )
        started = time.time()
        metrics = check_metrics(fn(ctx))
        return ChildOutcome(
            status=Status.OK, metrics=metrics, started_at=started, ended_at=time.time()
        )
    except SystemExit as exc:
        print(
            f"foldrunner: the entry point called sys.exit({exc.code!r}) without returning a result",
            file=sys.stderr,
        )
        raise
    except BaseException as exc:  # noqa: BLE001 - the child turns every failure into an outcome
        return _error_outcome(exc, started)
