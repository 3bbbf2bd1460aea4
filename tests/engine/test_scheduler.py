"""Unit tests of the scheduler (foldrunner.engine.scheduler): retries and their budget,
backoff away from a failing GPU, stops, the deadline, withdrawn attempts. Real fold
processes and a real journal; no orchestrator (no lock, no preflight, no results files)."""

from __future__ import annotations

import threading
import time

import pytest

from engine_rig import FAST, DyingSpare, Recorded, Rig
from foldrunner.engine.limits import Limits
from foldrunner.engine.scheduler import Scheduler
from foldrunner.gpu.inventory import Slot
from foldrunner.launch.local import Launched
from foldrunner.wire.outcome import Status

pytestmark = pytest.mark.timeout(60)


def scheduler(r: Rig, limits: Limits = FAST, slots: list[Slot] | None = None, **kw) -> Scheduler:
    return Scheduler(journal=r.journal, paths=r.paths, slots=slots or [Slot(0), Slot(1)],
                     limits=limits, template=r.template, launcher=r.launcher, terminator=r.term,
                     events=r.events, notes=print, **kw)


def work(r: Rig):
    return [(f, 1, 0) for f in r.plan.folds]


def rows(r: Rig) -> list[tuple]:
    return [tuple(x) for x in r.journal.db.execute(
        "SELECT fold_id, attempt, status, gpu FROM attempts ORDER BY fold_id, attempt")]


def test_a_crash_is_retried_and_the_retry_is_final(rig):
    r = rig(params={"case": "fail_once"}, folds=2)
    scheduler(r, Limits(timeout=20, grace=1, attempts=3, backoff=0.0)).run(work(r))
    assert rows(r) == [("t0-r0-f0", 1, "crashed", None), ("t0-r0-f0", 2, "ok", None),
                       ("t0-r0-f1", 1, "crashed", None), ("t0-r0-f1", 2, "ok", None)]
    ended = [s[3] for s in r.events.seen if s[0] == "ended"]
    assert sorted(ended) == [("crashed", False), ("crashed", False), ("ok", True), ("ok", True)]


def test_the_retry_budget_counts_every_attempt(rig):
    r = rig(params={"case": "exit3"})
    scheduler(r, Limits(timeout=20, grace=1, attempts=2, backoff=0.0)).run(work(r))
    assert [x[2] for x in rows(r)] == ["crashed", "crashed"]
    assert [s[3] for s in r.events.seen if s[0] == "ended"] == [("crashed", False), ("crashed", True)]


def test_a_retry_goes_to_another_gpu_when_one_is_free(rig):
    r = rig(params={"case": "fail_once"})
    slots = [Slot(0, gpu=0), Slot(1, gpu=1)]
    scheduler(r, Limits(timeout=20, grace=1, attempts=2, backoff=0.0), slots=slots).run(work(r))
    assert rows(r) == [("t0-r0-f0", 1, "crashed", 0), ("t0-r0-f0", 2, "ok", 1)]


def test_backoff_delays_the_retry(rig):
    r = rig(params={"case": "fail_once"})
    t0 = time.monotonic()
    scheduler(r, Limits(timeout=20, grace=1, attempts=2, backoff=1.5)).run(work(r))
    first_end, second_start = r.journal.db.execute(
        "SELECT (SELECT ended_at FROM attempts WHERE attempt = 1),"
        " (SELECT started_at FROM attempts WHERE attempt = 2)").fetchone()
    assert second_start - first_end >= 1.5 * 0.75 - 0.05  # the jitter is +-25%
    assert time.monotonic() - t0 < 15


def test_a_stop_cancels_what_runs_and_launches_nothing_more(rig):
    r = rig(params={"case": "hang"}, folds=4)
    s = scheduler(r, Limits(timeout=30, grace=1, attempts=3, backoff=0.0))
    threading.Timer(1.0, s.request_stop, args=(Status.CANCELLED, "interrupted by SIGINT")).start()
    t0 = time.monotonic()
    s.run(work(r))
    assert time.monotonic() - t0 < 8
    assert rows(r) == [("t0-r0-f0", 1, "cancelled", None), ("t0-r0-f1", 1, "cancelled", None)]
    assert s.stop_reason == "interrupted by SIGINT"
    assert all(final for name, *_, (status, final) in
               [x for x in r.events.seen if x[0] == "ended"])


def test_a_deadline_already_past_launches_nothing(rig):
    r = rig(params={"case": "return"}, folds=2)
    s = scheduler(r, deadline=time.monotonic() - 1)
    s.run(work(r))
    assert rows(r) == [] and s.stop_status is Status.CANCELLED
    assert s.stop_reason == "past the run's deadline"


def test_the_deadline_ends_running_folds_as_cancelled(rig):
    r = rig(params={"case": "hang"})
    s = scheduler(r, deadline=time.monotonic() + 1.0)
    s.run(work(r))
    assert [x[2] for x in rows(r)] == ["cancelled"]


class _FirstSpareDies:
    """The first process handed out is a spare that dies in its handover; then cold starts."""

    def __init__(self, r: Rig) -> None:
        self.r, self.first = r, True

    def start(self, task, slot) -> Launched:
        if self.first:
            self.first = False
            return DyingSpare(self.r).start(task, slot)
        return self.r.launcher.start(task, slot)

    def attempt(self, attempt, task, now):
        attempt.launch(self, task, now)
        return attempt

    def __getattr__(self, name):  # keep_warm, waitables, ...: the real launcher's
        return getattr(self.r.launcher, name)


def test_a_withdrawn_attempt_runs_again_under_its_number(rig):
    r = rig(params={"case": "return"})
    s = scheduler(r)
    s.launcher = _FirstSpareDies(r)  # type: ignore[assignment]
    s.run(work(r))
    assert r.events.names() == ["started", "withdrawn", "started", "result", "ended"]
    assert [x[2] for x in r.events.seen if x[0] in ("started", "withdrawn", "ended")] == [1, 1, 1, 1]
    assert rows(r) == [("t0-r0-f0", 1, "ok", None)]


def test_results_are_journaled_when_they_arrive(rig):
    """An ok result is in the journal before its process has exited (a lingering fold)."""
    r = rig(entrypoint="behave:linger")
    s = scheduler(r, Limits(timeout=20, grace=1, exit_timeout=3, attempts=1))
    seen: list[tuple] = []

    def look():
        time.sleep(1.5)
        from foldrunner.store.journal import Journal

        with Journal(r.paths.journal, readonly=True) as j:
            seen.extend(tuple(x) for x in j.db.execute("SELECT status, lingered FROM attempts"))

    t = threading.Thread(target=look)
    t.start()
    s.run(work(r))
    t.join()
    assert seen == [("ok", 0)]  # journaled ok while it still lingered
    assert [tuple(x) for x in r.journal.db.execute("SELECT status, lingered FROM attempts")] == [("ok", 1)]


class _Faulty(Recorded):
    """A subscriber (a view, a results file) that fails on its first event of a kind."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def attempt_started(self, start) -> None:
        if self.kind == "started":
            raise RuntimeError("the view broke")

    def tick(self, now: float) -> None:
        if self.kind == "tick":
            raise RuntimeError("the view broke")


@pytest.mark.parametrize("kind", ["started", "tick"])
def test_a_failing_subscriber_never_stops_the_run(rig, kind):
    """The journal is told first and a view's fault is noted once: every fold still runs
    to its end, none is left running (a fault at a fold's start once left it unowned)."""
    r = rig(params={"case": "return"}, folds=3)
    notes: list[str] = []
    s = Scheduler(journal=r.journal, paths=r.paths, slots=[Slot(0), Slot(1)], limits=FAST,
                  template=r.template, launcher=r.launcher, terminator=r.term,
                  events=_Faulty(kind), notes=notes.append)
    s.run(work(r))
    assert [x[2] for x in rows(r)] == ["ok", "ok", "ok"]
    assert len(notes) == 1 and "the view broke" in notes[0]


def test_the_loop_sleeps_while_a_fold_lingers(rig):
    """A fold that lingers after its result costs the orchestrator no busy loop."""
    import resource

    r = rig(entrypoint="behave:linger")
    s = scheduler(r, Limits(timeout=20, grace=1, exit_timeout=3, attempts=1))
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    s.run(work(r))
    after = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.monotonic() - t0
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert wall >= 3  # it did linger for exit_timeout
    assert cpu < 0.25 * wall, f"{cpu:.2f}s of CPU in {wall:.1f}s"
