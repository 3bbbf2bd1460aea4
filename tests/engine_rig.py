"""The engine's parts put together by hand, for the unit tests of the attempt and the
scheduler: a real journal, real fold processes (tests/folds), the real terminator and
launcher; no orchestrator around them."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from multiprocess.connection import wait

from conftest import FOLDS, base_spec
from foldrunner.config.plan import Fold, Plan, build_plan
from foldrunner.config.spec import load_spec
from foldrunner.engine.attempt import Attempt, Finished, TaskTemplate, Watchers
from foldrunner.engine.events import AttemptStart, Events
from foldrunner.engine.limits import Limits
from foldrunner.gpu.inventory import Slot
from foldrunner.gpu.watch import GpuWatch
from foldrunner.procs.memory import OomCounter
from foldrunner.child.task import SpareInit
from foldrunner.launch.launcher import start_spare
from foldrunner.launch.local import Launched, LocalLauncher
from foldrunner.procs.terminate import Terminator
from foldrunner.store.journal import Journal
from foldrunner.store.paths import RunPaths
from foldrunner.wire.outcome import AttemptResult

@pytest.fixture
def rig(tmp_path):
    """``rig(**kw)``: a :class:`Rig` in the test's temporary folder, closed after the test
    (import it into a test module to use it)."""
    made: list[Rig] = []

    def make(**kw) -> Rig:
        made.append(Rig(tmp_path, **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


FAST = Limits(timeout=20.0, grace=1.0, exit_timeout=5.0, attempts=1, backoff=0.0)


@dataclass
class Recorded(Events):
    """Every event, in order, as ``(name, fold_id, attempt, detail)``."""

    seen: list[tuple[str, str, int, Any]] = field(default_factory=list)

    def attempt_started(self, start: AttemptStart) -> None:
        self.seen.append(("started", start.fold.fold_id, start.attempt, start.pid))

    def report(self, fold: Fold, attempt: int, metrics: dict[str, Any], at: float) -> None:
        self.seen.append(("report", fold.fold_id, attempt, metrics))

    def result_arrived(self, fold: Fold, result: AttemptResult) -> None:
        self.seen.append(("result", fold.fold_id, result.attempt, result.status.value))

    def attempt_withdrawn(self, fold: Fold, attempt: int, why: str) -> None:
        self.seen.append(("withdrawn", fold.fold_id, attempt, why))

    def attempt_ended(self, fold: Fold, result: AttemptResult, final: bool) -> None:
        self.seen.append(("ended", fold.fold_id, result.attempt, (result.status.value, final)))

    def names(self) -> list[str]:
        return [s[0] for s in self.seen]


class Rig:
    """One run's engine parts over ``tests/folds`` (entry point ``matrix:train`` unless
    ``entrypoint`` says otherwise)."""

    def __init__(self, tmp_path: Path, *, entrypoint: str = "matrix:train",
                 params: dict[str, Any] | None = None, folds: int = 1, spares: bool = False) -> None:
        spec = load_spec(base_spec(tmp_path, entrypoint=entrypoint, params=params or {},
                                   cv={"folds": folds}))
        self.plan: Plan = build_plan(spec)
        self.paths = RunPaths(tmp_path / "run")
        self.paths.root.mkdir(parents=True)
        self.paths.logs.mkdir()
        self.journal = Journal(self.paths.journal)
        self.journal.initialise(run_id="rig", spec_yaml="", plan=self.plan, name="t")
        self.term = Terminator(stray_grace=1.0)
        self.events = Recorded()
        self.template = TaskTemplate(
            run_id="rig", run_dir=str(self.paths.root), entrypoint=entrypoint,
            entrypoint_blob=None, workdir=str(FOLDS), env={}, grace=1.0,
        )
        self.launcher = LocalLauncher(
            run_id="rig", paths=self.paths, terminator=self.term, grace=1.0, notes=print,
            env={}, workdir=str(FOLDS), spares=spares,
        )
        self.term.keep(self.launcher.pids)  # the fold servers and spares are kept

    def attempt(self, limits: Limits = FAST, fold: int = 0, number: int = 1,
                slot: Slot | None = None) -> Attempt:
        f = self.plan.folds[fold]
        slot = slot or Slot(0)
        watchers = Watchers(self.term, GpuWatch(None, print), OomCounter(), self.events)
        log_path = self.paths.log(f.fold_id, number)
        a = Attempt(f, number, 1, slot, limits, watchers, log_path, self.template.marker(f, number))
        a.launch(self.launcher, self.template.task(f, number, slot, log_path), time.monotonic())
        a.announce()
        return a

    def drive(self, a: Attempt, limit: float = 30.0) -> Finished:
        """The scheduler's loop for one attempt: wait, read, enforce its clocks, until its
        process ends; then until the terminator has ended what it left."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            objs = [a.child.sentinel] + ([] if a.eof else [a.child.fd])
            ready = wait(objs, 0.05)
            if a.child.fd in ready:
                a.read()
            if a.child.sentinel in ready:
                ended = a.finish()
                assert self.term.wait(time.monotonic() + 10), "the fold's tree did not end"
                return ended
            a.enforce(time.monotonic())
            self.term.poll(time.monotonic())
        raise AssertionError(f"attempt still running after {limit}s")

    def close(self) -> None:
        self.launcher.close()
        self.journal.close()


class DyingSpare:
    """A launcher whose one process is a warm spare that exits before it takes its task
    (its task pipe is closed unread): the attempt must be withdrawn, not failed."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig

    def start(self, task, slot):
        init = SpareInit(gpu=None, env={}, workdir=task.workdir, preload=[],
                         log_path=str(self.rig.paths.logs / "spare.log"), marker=task.marker,
                         grace=1.0)
        child, task_fd = start_spare(init, "dying spare")
        os.close(task_fd)  # no task will ever come: the spare exits
        return Launched(child, via_spare=True)
