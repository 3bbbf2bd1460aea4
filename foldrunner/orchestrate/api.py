"""The library's entry: ``foldrunner.run(spec) -> DataFrame``.

Follow one fold: spec -> plan -> preflight -> supervisor -> child -> outcome -> journal
-> results. This module wires those steps together and owns the run directory.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
from multiprocess.connection import wait

from foldrunner.procs import proctree
from foldrunner.child.entry import ChildTask, read_messages
from foldrunner.errors import InterruptedRun, PreflightError, RunDirError, StorageError, storage_error
from foldrunner.gpu.inventory import Inventory, NvmlInventory, Slot, make_slots
from foldrunner.store.journal import Journal, journal_storage_error
from foldrunner.orchestrate.lock import RunLock
from foldrunner.launch.launcher import ZygoteError, start_child, start_zygote, stop_zygote
from foldrunner.wire.outcome import AttemptResult, ChildOutcome, Status
from foldrunner.defaults import Timing
from foldrunner.store.paths import RunPaths
from foldrunner.config.plan import Fold, Plan, build_plan
from foldrunner.store.results import atomic_write, build_table, write_results
from foldrunner.config.spec import Spec, load_spec
from foldrunner.engine.supervisor import Events, Limits, Supervisor
from foldrunner.procs.terminate import end_now

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


class ResultsWriter:
    """Rewrites the results files as folds finish, at most every few seconds.

    The journal is the durable record; the files follow it. A big run's table takes
    longer to write, so the interval grows with it: never more than a tenth of the
    orchestrator's time goes to rewriting results.
    """

    def __init__(self, journal: Journal, paths: RunPaths,
                 notes: Callable[[str], None] | None = None) -> None:
        self.journal, self.paths = journal, paths
        self.last = 0.0
        self.interval = Timing.RESULTS_FLUSH_INTERVAL
        self.notes = notes or _no_notes
        self.storage_error: StorageError | None = None
        """Why the latest write of the results files failed (None once one succeeds)."""

    def attempt_started(self, fold: Fold, attempt: int, slot: Slot) -> None:
        pass

    def attempt_ended(self, fold: Fold, result: AttemptResult, final: bool) -> None:
        if final and time.monotonic() - self.last >= self.interval:
            self.flush()

    def report(self, fold: Fold, attempt: int, metrics: dict[str, Any]) -> None:
        pass

    def flush(self) -> pd.DataFrame:
        """Rewrite the files from the journal; return the table. A full disk or a
        read-only run dir never stops the run here: one note, and the journal keeps every
        result (the run raises :attr:`storage_error` at its end if it still fails)."""
        t0 = time.monotonic()
        df = build_table(self.journal)
        try:
            write_results(df, self.paths)
        except StorageError as exc:
            if self.storage_error is None:
                self.notes(f"cannot write the results file {exc.path}: {exc.reason}; the run goes "
                           "on (the journal keeps every result) and it is written again later")
            self.storage_error = exc
        else:
            self.storage_error = None
        _give_back_freed_memory()
        self.last = time.monotonic()
        self.interval = max(Timing.RESULTS_FLUSH_INTERVAL, 10 * (self.last - t0))
        return df


def _give_back_freed_memory() -> None:
    """Hand the heap that building the table freed back to the OS (glibc's
    ``malloc_trim``): a run that lives for days keeps a flat RSS instead of the high-water
    mark of its largest table. A no-op where there is no glibc."""
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _Fanout:
    def __init__(self, *sinks: Events) -> None:
        self.sinks = sinks

    def attempt_started(self, fold: Fold, attempt: int, slot: Slot) -> None:
        for s in self.sinks:
            s.attempt_started(fold, attempt, slot)

    def attempt_ended(self, fold: Fold, result: AttemptResult, final: bool) -> None:
        for s in self.sinks:
            s.attempt_ended(fold, result, final)

    def report(self, fold: Fold, attempt: int, metrics: dict[str, Any]) -> None:
        for s in self.sinks:
            s.report(fold, attempt, metrics)


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
                    if message[0] == "result":
                        outcome = message[1]
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
    plan = build_plan(s)
    paths = RunPaths(Path(opts.run_dir) if opts.run_dir else s.run_dir())
    if paths.root.exists() and not paths.root.is_dir():
        raise RunDirError(f"run directory {paths.root} exists and is not a directory")
    try:
        paths.make()
    except OSError as exc:
        raise storage_error("the run directory", paths.logs, exc) from exc
    with _run_lock(paths.lock):
        return _run_locked(s, plan, paths, opts, entrypoint, events, notes or _no_notes)


@contextmanager
def _run_lock(path: Path) -> Iterator[None]:
    """``RunLock(path)``: a lock file that cannot be written is a StorageError; its
    release never hides the error that ends the run (the kernel drops the lock anyway)."""
    lock = RunLock(path)
    try:
        lock.acquire()
    except OSError as exc:
        raise storage_error("the lock file", path, exc) from exc
    try:
        yield
    finally:
        try:
            lock.release()
        except OSError:  # a read-only run dir: the lock goes with its file descriptor
            pass


def _run_locked(
    s: Spec,
    plan: Plan,
    paths: RunPaths,
    opts: RunOptions,
    entrypoint: Callable[..., Any] | None,
    events: Events | None,
    notes: Callable[[str], None],
) -> pd.DataFrame:
    _check_run_dir(paths, opts.resume)
    entry_blob = _dill(entrypoint) if entrypoint is not None else None
    preflight(s, paths, entry_blob, opts.start_method)
    gpus = opts.gpus if opts.gpus is not None else s.resources.gpus
    inventory = opts.inventory or NvmlInventory()
    slots, slot_notes = make_slots(
        gpus, per_gpu=s.resources.per_gpu,
        workers=opts.workers if opts.workers is not None else s.resources.workers,
        min_free_memory=s.resources.min_free_memory, inventory=inventory,
    )
    for n in slot_notes:
        notes(n)
    with _open_journal_file(paths) as journal:
        run_id = _open_journal(journal, s, plan, opts.resume)
        owner = _owner(paths)
        if opts.resume:
            ended = end_orphans(journal, run_id, s.limits.grace, owner, notes)
            if ended:
                notes(f"ended {ended} process(es) left running by the previous orchestrator")
            _close_interrupted(journal)
        journal.set_owner(owner)
        _write_spec(paths, s)
        done = journal.ok_folds()
        counts, used = journal.attempt_counts(), journal.used_attempts()
        work = [(f, counts.get(f.fold_id, 0) + 1, used.get(f.fold_id, 0))
                for f in plan.folds if f.fold_id not in done]
        writer = ResultsWriter(journal, paths, notes)
        # the zygote last: it imports the preloads (seconds) and must end with the run
        server, spares = None, s.resources.spares
        if s.resources.zygote:
            server = _zygote(s, paths, opts, notes)
            spares = spares and server is None  # forks from the zygote need no spares
        try:
            sup = Supervisor(
                journal=journal, paths=paths, run_id=f"{run_id}.{owner['token']}", slots=slots,
                limits=limits_of(s),
                entrypoint=s.entrypoint, entrypoint_blob=entry_blob, workdir=str(s.workdir),
                env=dict(s.env), events=_Fanout(writer, *([events] if events else [])),
                start_method=opts.start_method, deadline=opts.deadline,
                inventory=inventory, notes=notes, spares=spares,
                preload=list(s.preload), server=server,
            )
            begin = getattr(events, "start", None)
            if begin is not None:
                begin(len(plan.folds), len(done))
            with _stop_on_signals(sup, opts.handle_signals):
                try:
                    sup.run(work)
                finally:
                    df = writer.flush()
                    df.attrs["planned"] = len(plan.folds)
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


@contextmanager
def _stop_on_signals(sup: Supervisor, enabled: bool) -> Iterator[None]:
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


def _dill(fn: Callable[..., Any]) -> bytes:
    import dill

    try:
        return bytes(dill.dumps(fn, recurse=True))
    except Exception as exc:  # noqa: BLE001 - any serialization failure is a usage error
        raise PreflightError(f"entrypoint= {fn!r} cannot be sent to a fold with dill: {exc}") from exc


@contextmanager
def _open_journal_file(paths: RunPaths) -> Iterator[Journal]:
    """``Journal(paths.journal)``; a journal that cannot be created or opened for writing
    (a full disk, a read-only run dir) is a StorageError."""
    try:
        journal = Journal(paths.journal)
    except (sqlite3.Error, OSError) as exc:
        error = journal_storage_error(paths.journal, exc)
        if error is None:
            raise
        raise error from exc
    with journal:
        yield journal


def _check_run_dir(paths: RunPaths, resume: bool) -> None:
    if paths.journal.exists() and not resume:
        raise RunDirError(
            f"run directory {paths.root} already holds a run (journal.sqlite): "
            "add --resume to finish it, or choose another --run-dir"
        )


def _open_journal(journal: Journal, spec: Spec, plan: Plan, resume: bool) -> str:
    meta = journal.meta()
    if resume and "plan_hash" in meta:
        if meta["plan_hash"] != plan.hash:
            raise RunDirError(_plan_difference(journal, plan, meta["plan_hash"]))
        return meta["run_id"]
    run_id = uuid.uuid4().hex[:12]
    journal.initialise(run_id=run_id, spec_yaml=spec.to_yaml(), plan=plan, name=spec.name)
    return run_id


def _plan_difference(journal: Journal, plan: Plan, old_hash: str) -> str:
    import json

    old = {r["fold_id"]: (r["seed"], json.loads(r["params"])) for r in journal.folds()}
    new = {f.fold_id: (f.seed, json.loads(json.dumps(dict(f.params), default=repr))) for f in plan.folds}
    diffs = []
    if set(old) != set(new):
        diffs.append(f"the journal has {len(old)} folds, this spec gives {len(new)}")
    for fid in sorted(set(old) & set(new)):
        if old[fid] != new[fid]:
            diffs.append(f"fold {fid}: journal {old[fid]}, spec {new[fid]}")
            break
    what = "; ".join(diffs) or "the plan hash differs"
    return (
        f"cannot resume: this spec's plan ({plan.hash}) differs from the journal's ({old_hash}): "
        f"{what}. Resume with the spec in the run directory's spec.yaml, or start a new run dir."
    )


def _close_interrupted(journal: Journal) -> None:
    """Attempts left 'running' by a dead orchestrator end as cancelled (interrupted)."""
    now = time.time()
    for a in journal.attempts():
        if a["status"] == Status.RUNNING.value:
            journal.end_attempt(
                AttemptResult(
                    fold_id=a["fold_id"], attempt=a["attempt"], status=Status.CANCELLED,
                    started_at=a["started_at"], ended_at=now,
                    duration_s=max(0.0, now - a["started_at"]), gpu=a["gpu"], pid=a["pid"],
                    error="interrupted: the orchestrator ended while this attempt ran",
                    log_path=a["log_path"],
                )
            )


def _owner(paths: RunPaths) -> dict[str, Any]:
    """This orchestrator, as the journal records it: pid, start time, the token in its
    folds' markers, and the run directory's identity (a copy of the dir has another)."""
    me = psutil.Process()
    st = os.stat(paths.root)
    return {"pid": me.pid, "started_at": me.create_time(), "token": uuid.uuid4().hex[:8],
            "dir": str(paths.root.resolve()), "dev": st.st_dev, "ino": st.st_ino}


def _same_process(pid: Any, started_at: Any) -> bool:
    """Whether ``pid`` is alive and is the process that started at ``started_at``."""
    try:
        p = psutil.Process(int(pid))
        return p.status() != psutil.STATUS_ZOMBIE and abs(p.create_time() - float(started_at)) < 0.5
    except (psutil.NoSuchProcess, TypeError, ValueError):
        return False


def end_orphans(journal: Journal, run_id: str, grace: float, owner: Mapping[str, Any],
                notes: Callable[[str], None] = lambda _: None) -> int:
    """End the processes a dead orchestrator's folds left running; return how many.

    Only what is proven to be this run's: the previous orchestrator recorded in the
    journal must be dead (else this is a copy of a live run, or it still runs), the run
    directory must be the one it ran in (not a copy), and each process must carry that
    orchestrator's marker, or be an attempt's root (pid and start time as journaled) with
    its process group. They end through the one termination path (TERM, grace, KILL).
    """
    prev = journal.owner()
    if prev and _same_process(prev.get("pid"), prev.get("started_at")):
        notes(f"the orchestrator that last ran this journal (pid {prev['pid']}) is still "
              "running: this run directory is a copy of a live run; its folds are left alone")
        return 0
    if prev and (prev.get("dev"), prev.get("ino")) != (owner["dev"], owner["ino"]):
        notes(f"this run directory is a copy of {prev.get('dir')}: processes of that run are "
              "left alone")
        return 0
    prefix = f"{run_id}.{prev['token']}/" if prev else f"{run_id}/"
    found: dict[int, psutil.Process] = {p.pid: p for p in proctree.marked_processes(prefix)}
    pgids: list[int] = []
    for a in journal.attempts():
        if a["status"] != Status.RUNNING.value or not a["pid"]:
            continue
        if a["pid_started_at"] is None or not _same_process(a["pid"], a["pid_started_at"]):
            continue
        found[a["pid"]] = psutil.Process(a["pid"])
        pgids.append(a["pid"])
    procs = [p for p in found.values() if proctree.alive(p)]
    if not procs:
        return 0
    return end_now(procs, pgids, grace=grace, label="orphans of the previous orchestrator")


def _write_spec(paths: RunPaths, spec: Spec) -> None:
    text = spec.to_yaml()
    try:
        atomic_write(paths.spec, lambda tmp: Path(tmp).write_text(text))
    except OSError as exc:
        raise storage_error("the spec file", paths.spec, exc) from exc
