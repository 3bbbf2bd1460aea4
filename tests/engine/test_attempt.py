"""Unit tests of one attempt (foldrunner.engine.attempt), driven without a scheduler:
real fold processes, the real terminator, events recorded in order."""

from __future__ import annotations

import time

import pytest
from multiprocess.connection import wait

from engine_rig import FAST, DyingSpare
from foldrunner.engine.attempt import Attempt, Watchers
from foldrunner.engine.limits import Limits
from foldrunner.gpu.inventory import Slot
from foldrunner.gpu.watch import GpuWatch
from foldrunner.procs.memory import OomCounter
from foldrunner.procs.proctree import pid_alive
from foldrunner.wire.outcome import Status

pytestmark = pytest.mark.timeout(60)


def test_an_ok_fold_reports_then_its_result_arrives_before_it_ends(rig):
    r = rig(params={"case": "report"})
    a = r.attempt()
    ended = r.drive(a)
    assert ended.result is not None and ended.result.status is Status.OK
    assert ended.result.metrics == {"acc": 0.9}
    assert r.events.names() == ["started", "report", "report", "report", "result"]
    assert r.events.seen[1][3] == {"epoch": 0, "loss": 1.0}
    assert a.slot.busy is False


def test_a_fold_past_its_timeout_is_ended_with_its_tree(rig):
    r = rig(params={"case": "escape_setsid_hang"})
    a = r.attempt(Limits(timeout=1.0, grace=1.0, attempts=1))
    t0 = time.monotonic()
    ended = r.drive(a)
    assert ended.result is not None and ended.result.status is Status.TIMEOUT
    assert "timed out after 1s" in ended.result.error
    assert time.monotonic() - t0 < 6
    f = r.plan.folds[0]
    escaped = int((r.paths.root / f"grandchild.{f.fold_id}.1.pid").read_text())
    assert not pid_alive(escaped)  # left by setsid, still the fold's: ended with it


def test_a_fold_that_ignores_sigterm_is_killed_after_grace(rig):
    r = rig(params={"case": "hang_ignore_term"})
    a = r.attempt(Limits(timeout=0.5, grace=1.0, attempts=1))
    ended = r.drive(a)
    assert ended.result is not None and ended.result.status is Status.TIMEOUT
    assert "still alive 1s after SIGTERM, killed with SIGKILL" in ended.result.error
    assert ended.result.signal == "SIGKILL"


def test_a_fold_lingering_after_its_result_keeps_it_and_is_ended(rig):
    r = rig(entrypoint="behave:linger")
    a = r.attempt(Limits(timeout=20.0, grace=1.0, exit_timeout=0.5, attempts=1))
    ended = r.drive(a)
    assert ended.result is not None and ended.result.status is Status.OK
    assert ended.result.lingered and ended.result.metrics == {"acc": 0.9}
    assert "did not exit within exit_timeout 0.5s" in ended.result.note
    assert r.events.names() == ["started", "result"]


def test_end_keeps_an_ok_result_and_says_why_otherwise(rig):
    r = rig(params={"case": "hang"})
    a = r.attempt()
    time.sleep(0.3)
    a.end(Status.CANCELLED, "interrupted by SIGINT", time.monotonic())
    ended = r.drive(a)
    assert ended.result is not None and ended.result.status is Status.CANCELLED
    assert ended.result.error.startswith("interrupted by SIGINT")


def test_a_crash_without_a_result_is_crashed_with_its_signal(rig):
    r = rig(params={"case": "segv"})
    ended = r.drive(r.attempt())
    assert ended.result is not None and ended.result.status is Status.CRASHED
    assert "killed by SIGSEGV without sending a result" in ended.result.error
    assert ended.result.signal == "SIGSEGV" and ended.result.exit_code is None


def test_garbage_on_the_pipe_ends_the_fold_as_crashed(rig):
    r = rig(entrypoint="wire_folds:train", params={"case": "bad_garbage"})
    ended = r.drive(r.attempt())
    assert ended.result is not None and ended.result.status is Status.CRASHED, ended.result
    assert r.events.names() == ["started"]


def test_a_spare_that_dies_before_taking_its_fold_withdraws_the_attempt(rig):
    r = rig(params={"case": "return"})
    f = r.plan.folds[0]
    slot = Slot(0)
    watchers = Watchers(r.term, GpuWatch(None, print), OomCounter(), r.events)
    log_path = r.paths.log(f.fold_id, 1)
    a = Attempt(f, 1, 1, slot, FAST, watchers, log_path, r.template.marker(f, 1))
    a.launch(DyingSpare(r), r.template.task(f, 1, slot, log_path), time.monotonic())
    ended = r.drive(a)
    assert ended.result is None and ended.withdrawn.startswith("exited with code")
    assert not a.started_msg and slot.busy is False


def test_the_wait_sees_the_pipe_before_the_death(rig):
    """A fold's result is read from its pipe even when its death is seen in the same wait."""
    r = rig(params={"case": "return"})
    a = r.attempt()
    while not wait([a.child.sentinel], 0.05):
        pass
    ended = a.finish()  # never read before: finish reads what is left
    assert ended.result is not None and ended.result.status is Status.OK
    assert ended.result.metrics["label"] == "fine"
    assert r.term.wait(time.monotonic() + 5)
