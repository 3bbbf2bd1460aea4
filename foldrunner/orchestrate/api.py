"""The library's entry: ``foldrunner.run(spec) -> DataFrame``.

Follow one fold: spec -> plan -> preflight -> scheduler -> attempt -> child -> outcome -> journal
-> results. This module wires those steps together: the run directory and its lock
(:mod:`foldrunner.orchestrate.lock`), the journal of a new run or a resume
(:mod:`foldrunner.orchestrate.resume`), the preflight import of the entry point
(:mod:`foldrunner.orchestrate.preflight`), the orphans of a dead orchestrator
(:mod:`foldrunner.orchestrate.orphans`), the engine, and the signals that stop a run.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from foldrunner.config.plan import Plan, build_plan
from foldrunner.config.spec import Spec, load_spec
from foldrunner.defaults import Timing
from foldrunner.engine.attempt import TaskTemplate
from foldrunner.engine.backend import Backend
from foldrunner.engine.events import Events, Fanout
from foldrunner.engine.limits import Limits
from foldrunner.engine.scheduler import Scheduler
from foldrunner.launch.local import LocalLauncher
from foldrunner.procs.terminate import Terminator
from foldrunner.errors import InterruptedRun, RunDirError, storage_error
from foldrunner.gpu.inventory import Inventory, NvmlInventory, Slot, make_slots
from foldrunner.launch.zygote import ZygoteError, start_zygote, stop_zygote
from foldrunner.orchestrate.backend import backend_of, check_backend, ray_target
from foldrunner.orchestrate.lock import run_lock
from foldrunner.orchestrate.orphans import end_orphans, owner_of
from foldrunner.orchestrate.preflight import dill_entrypoint, preflight
from foldrunner.orchestrate.resume import (check_run_dir, close_interrupted, open_journal,
                                           open_journal_file, open_search, write_spec)
from foldrunner.search.study import require_optuna
from foldrunner.store.journal import Journal
from foldrunner.store.paths import RunPaths
from foldrunner.store.writer import ResultsWriter
from foldrunner.wire.outcome import Status

if TYPE_CHECKING:  # the Ray backend is imported only when a run uses it
    from foldrunner.remote.setup import RayRun

Overrides = Sequence[str] | Mapping[str, Any]


@dataclass
class RunOptions:
    """Choices of one invocation that are not part of the spec."""

    run_dir: Path | None = None
    resume: bool = False
    gpus: list[int] | str | None = None
    workers: int | None = None
    start_method: str = "forkserver"
    inventory: Inventory | None = None
    deadline: float | None = None
    """``time.monotonic()`` after which nothing is launched and running folds are cancelled."""
    handle_signals: bool = True
    """Turn SIGINT, SIGTERM and SIGHUP into a clean stop (main thread only)."""
    backend: str | None = None
    """``local`` or ``ray`` (``--backend``): overrides the spec's ``backend``; None: the spec's."""
    address: str | None = None
    """``HOST:PORT``, ``auto`` or ``local`` (``--address``): overrides the spec's ``ray.address``
    (only with the ray backend); None: the spec's."""


def prepare_spec(spec: str | os.PathLike[str] | Mapping[str, Any] | Spec, overrides: Overrides = (),
                 **kw: Any) -> Spec:
    """Load and validate a spec with overrides; ``a__b=v`` keywords mean ``a.b=v``."""
    extra = {k.replace("__", "."): v for k, v in kw.items()}
    if extra:
        if isinstance(overrides, Mapping):
            merged: Overrides = {**overrides, **extra}
        else:
            merged = [*overrides, *(f"{k}={_yaml_value(v)}" for k, v in extra.items())]
    else:
        merged = overrides
    return load_spec(spec, merged)


def _yaml_value(v: Any) -> str:
    import json

    return v if isinstance(v, str) else json.dumps(v)


def limits_of(spec: Spec) -> Limits:
    lim, retry = spec.limits, spec.retry
    return Limits(
        timeout=lim.timeout, grace=lim.grace, exit_timeout=lim.exit_timeout, stall=lim.stall,
        max_rss=lim.max_rss, max_gpu_memory=lim.max_gpu_memory, attempts=retry.attempts,
        retry_on=frozenset(Status(s) for s in retry.on), backoff=retry.backoff,
    )


def run(
    spec: str | os.PathLike[str] | Mapping[str, Any] | Spec,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    *,
    entrypoint: Callable[..., Any] | None = None,
    overrides: Overrides = (),
    events: Events | None = None,
    options: RunOptions | None = None,
    notes: Callable[[str], None] | None = None,
    **override_kw: Any,
) -> pd.DataFrame:
    """Run every fold of ``spec``; return the results table (one row per fold).

    ``spec`` is a path, a dict or a :class:`Spec`; ``overrides`` are ``-o`` style strings
    or a mapping of dotted keys; keyword overrides use ``__`` for dots
    (``run(spec, limits__timeout="10m")``). ``entrypoint=`` replaces the spec's entry
    point by a callable, sent to each fold with dill.
    """
    opts = options or RunOptions()
    if run_dir is not None:
        opts.run_dir = Path(run_dir)
    opts.resume = opts.resume or resume
    s = prepare_spec(spec, overrides, **override_kw)
    check_backend(s, opts)  # before the run dir exists: a refused backend leaves nothing
    require_optuna(s)
    plan = build_plan(s)
    paths = RunPaths(Path(opts.run_dir) if opts.run_dir else s.run_dir())
    if paths.root.exists() and not paths.root.is_dir():
        raise RunDirError(f"run directory {paths.root} exists and is not a directory")
    try:
        paths.make()
    except OSError as exc:
        raise storage_error("the run directory", paths.logs, exc) from exc
    with run_lock(paths.lock):
        return _run_locked(s, plan, paths, opts, entrypoint, events, notes or _no_notes)


def _run_locked(
    s: Spec,
    plan: Plan,
    paths: RunPaths,
    opts: RunOptions,
    entrypoint: Callable[..., Any] | None,
    events: Events | None,
    notes: Callable[[str], None],
) -> pd.DataFrame:
    check_run_dir(paths, opts.resume)
    entry_blob = dill_entrypoint(entrypoint) if entrypoint is not None else None
    preflight(s, paths, entry_blob, opts.start_method)
    workers = opts.workers if opts.workers is not None else s.resources.workers
    inventory = opts.inventory or NvmlInventory()
    with ExitStack() as stack:
        ray: RayRun | None = None
        if backend_of(s, opts) == "ray":
            from foldrunner.remote.setup import ray_run

            target = ray_target(s, opts)
            ray = stack.enter_context(ray_run(s, target.address, target.namespace, workers,
                                              opts.start_method, paths, notes))
            slots = ray.slots
        else:
            slots, slot_notes = make_slots(
                opts.gpus if opts.gpus is not None else s.resources.gpus,
                per_gpu=s.resources.per_gpu, workers=workers,
                min_free_memory=s.resources.min_free_memory, inventory=inventory,
            )
            for n in slot_notes:
                notes(n)
        return _run_engine(s, plan, paths, opts, entry_blob, events, notes, slots, inventory, ray)


def _run_engine(s: Spec, plan: Plan, paths: RunPaths, opts: RunOptions, entry_blob: bytes | None,
                events: Events | None, notes: Callable[[str], None], slots: list[Slot],
                inventory: Inventory, ray: RayRun | None) -> pd.DataFrame:
    """Open the journal (a new run or a resume), run the engine, write the results."""
    with open_journal_file(paths) as journal:
        run_id = open_journal(journal, s, plan, opts.resume)
        owner = owner_of(paths)
        if opts.resume:
            ended = end_orphans(journal, run_id, s.limits.grace, owner, notes)
            if ended:
                notes(f"ended {ended} process(es) left running by the previous orchestrator")
            close_interrupted(journal)
        journal.set_owner(owner)
        write_spec(paths, s)
        done = journal.ok_folds()
        counts, used = journal.attempt_counts(), journal.used_attempts()
        work = [(f, counts.get(f.fold_id, 0) + 1, used.get(f.fold_id, 0))
                for f in plan.folds if f.fold_id not in done]
        writer = ResultsWriter(journal, paths, notes)
        # the zygote last: it imports the preloads (seconds) and must end with the run
        server, spares = None, s.resources.spares and ray is None
        if s.resources.zygote and ray is None:
            server = _zygote(s, paths, opts, notes)
            spares = spares and server is None  # forks from the zygote need no spares
        try:
            run_token = f"{run_id}.{owner['token']}"
            sup = _engine(s, opts, paths, journal, slots, run_token, entry_blob,
                          Fanout(writer, *([events] if events else [])), inventory, notes,
                          spares, server, ray.make(run_id, owner["token"]) if ray else None)
            search = open_search(s, plan, journal, paths, opts.resume, sup.others, notes)
            if search is not None:  # an adaptive search: its trials come as slots free up
                work = search.work
            sup.events.run_started(search.total if search else len(plan.folds),
                                   search.done if search else len(done))
            with _stop_on_signals(sup, opts.handle_signals):
                try:
                    sup.run(work, search.source if search else None)
                finally:
                    df = writer.flush()
                    df.attrs["planned"] = search.total if search else len(plan.folds)
                    df.attrs["run_dir"] = str(paths.root)
                    if s.objective is not None:
                        df.attrs["objective"] = (s.objective.metric, s.objective.mode)
        finally:
            if server is not None:
                stop_zygote(server)
    if writer.storage_error is not None:  # every result is journaled, the files lag behind
        raise writer.storage_error
    if sup.stop_status is Status.CANCELLED and sup.stop_reason.startswith("interrupted"):
        raise InterruptedRun(
            f"{sup.stop_reason}: finished results are kept in {paths.root}; "
            f"run again with --resume to finish the rest",
            results=df,
        )
    return df


def _engine(s: Spec, opts: RunOptions, paths: RunPaths, journal: Journal, slots: list[Slot],
            run_id: str, entry_blob: bytes | None, events: Events, inventory: Inventory,
            notes: Callable[[str], None], spares: bool, server: Any,
            remote: Backend | None = None) -> Scheduler:
    """The engine of one run: its terminator, launcher (``remote``: the Ray backend's),
    attempts' template, scheduler."""
    grace = s.limits.grace
    term = Terminator(stray_grace=grace, sweep_every=Timing.SWEEP_EVERY)
    launcher: Backend = remote or LocalLauncher(
        run_id=run_id, paths=paths, terminator=term, grace=grace, notes=notes, env=dict(s.env),
        workdir=str(s.workdir), start_method=opts.start_method, spares=spares,
        preload=list(s.preload), server=server,
    )
    template = TaskTemplate(
        run_id=run_id, run_dir=str(paths.root), entrypoint=s.entrypoint,
        entrypoint_blob=entry_blob, workdir=str(s.workdir), env=dict(s.env), grace=grace,
    )
    return Scheduler(
        journal=journal, paths=paths, slots=slots, limits=limits_of(s), template=template,
        launcher=launcher, terminator=term, events=events, deadline=opts.deadline,
        inventory=inventory, notes=notes,
    )


@contextmanager
def _stop_on_signals(sup: Scheduler, enabled: bool) -> Iterator[None]:
    """SIGINT, SIGTERM, SIGHUP: stop cleanly; a second one kills at once."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    count = 0

    def handler(signum: int, _frame: Any) -> None:
        nonlocal count
        count += 1
        name = signal.Signals(signum).name
        sup.request_stop(Status.CANCELLED, f"interrupted by {name}", hard=count > 1)

    sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    old = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _zygote(s: Spec, paths: RunPaths, opts: RunOptions, notes: Callable[[str], None]) -> Any:
    """The zygote server for this spec, or None (and a note saying why) when it cannot be."""
    if opts.start_method != "forkserver":
        notes(f"resources.zygote: not used with the {opts.start_method} start method")
        return None
    try:
        return start_zygote(list(s.preload), str(s.workdir), dict(s.env), paths.zygote_status)
    except ZygoteError as exc:
        notes(f"resources.zygote: not used: {exc}; folds start from the plain fold server")
        return None


def _no_notes(_: str) -> None:
    pass
