"""The spare pool on its own (``foldrunner.launch.spares.SparePool``): real spares started
by the fold server, driven by hand as the engine drives them. (Whole runs with spares:
``test_spares.py``.)"""

from __future__ import annotations

import os
import select
import signal
import time
from pathlib import Path

import pytest

from conftest import FOLDS
from foldrunner.child.task import ChildTask
from foldrunner.gpu.inventory import Slot
from foldrunner.launch.launcher import server_pids
from foldrunner.launch.spares import SPARE_DEATHS_TO_GIVE_UP, Spare, SparePool
from foldrunner.procs import proctree
from foldrunner.procs.terminate import Terminator
from foldrunner.store.paths import RunPaths
from foldrunner.wire.framing import read_messages
from foldrunner.wire.messages import Result, Started
from foldrunner.wire.outcome import Status

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def make_pool(tmp_path):
    """A pool over a fresh run dir; every pool made is closed afterwards."""
    paths = RunPaths(tmp_path / "run")
    paths.make()
    pools: list[SparePool] = []

    def make(preload: list[str] | None = None, enabled: bool = True,
             env: dict[str, str] | None = None) -> tuple[SparePool, list[str]]:
        notes: list[str] = []
        pool = SparePool(enabled=enabled, preload=list(preload or []), env=dict(env or {}),
                         workdir=str(FOLDS), run_id="r", paths=paths, start_method="forkserver",
                         notes=notes.append, terminator=Terminator(server_pids), grace=1.0)
        pools.append(pool)
        return pool, notes

    yield make
    for pool in pools:
        pool.close_all()
        pool.term.wait(time.monotonic() + 5)


def until_ready(pool: SparePool, spares: list[Spare], timeout: float = 20.0) -> None:
    """Read the spares' pipes, as the engine's wait does, until each said it is ready."""
    deadline = time.monotonic() + timeout
    while any(s.ready_at is None for s in spares):
        assert time.monotonic() < deadline, "a spare never became ready"
        fds = pool.fds()
        for fd in select.select(list(fds), [], [], 0.5)[0]:
            pool.on_readable(fds[fd])


def task(paths: RunPaths, entrypoint: str = "matrix:train", **params: object) -> ChildTask:
    return ChildTask(fold_id="t0-r0-f0", trial=0, replicate=0, fold=0, folds=1, seed=0,
                     attempt=1, params=dict(params), gpu=None, run_dir=str(paths.root),
                     log_path=str(paths.log("t0-r0-f0", 1)), workdir=str(FOLDS),
                     entrypoint=entrypoint, marker="r/t0-r0-f0/1", grace=1.0)


def test_top_up_gives_a_spare_to_each_free_slot_while_folds_wait(make_pool):
    pool, _ = make_pool()
    slots = [Slot(0, gpu=0), Slot(1, gpu=1), Slot(2, gpu=2, out=True), Slot(3, gpu=3)]
    pool.top_up(slots, pending=2)  # no more spares than folds waiting
    assert sorted(pool.by_slot) == [0, 1]
    pool.top_up(slots, pending=5)  # never for a slot out of the rotation
    assert sorted(pool.by_slot) == [0, 1, 3]
    assert [s.gpu for s in pool.by_slot.values()] == [0, 1, 3]
    assert pool.pids() == {s.child.pid for s in pool.by_slot.values()} and len(pool.pids()) == 3
    until_ready(pool, list(pool.by_slot.values()))
    pool.close_all()
    assert pool.by_slot == {} and pool.retiring == [] and pool.pids() == set()


def test_a_disabled_pool_starts_nothing(make_pool):
    pool, _ = make_pool(enabled=False)
    pool.top_up([Slot(0)], pending=3)
    assert pool.by_slot == {} and pool.started == 0


def test_a_spare_is_taken_only_once_it_is_ready(make_pool, tmp_path):
    gate = tmp_path / "gate"
    pool, _ = make_pool(preload=["gated_preload"], env={"GATED_PRELOAD_GATE": str(gate)})
    slot = Slot(0)
    pool.top_up([slot], pending=1)
    spare = pool.by_slot[0]
    time.sleep(1.0)  # plenty for a spare to start: it waits in its import
    fds = pool.fds()
    for fd in select.select(list(fds), [], [], 0)[0]:
        pool.on_readable(fds[fd])
    assert spare.ready_at is None
    assert pool.take(slot) is None  # still importing: the fold starts cold
    assert pool.by_slot[0] is spare  # and the spare keeps warming for the next one
    gate.write_text("")
    until_ready(pool, [spare])
    assert pool.take(slot) is spare and pool.by_slot == {}
    pool.by_slot[0] = spare  # back, for the fixture to retire it


def test_a_handed_over_spare_runs_its_one_fold(make_pool):
    pool, _ = make_pool()
    slot = Slot(0)
    pool.top_up([slot], pending=1)
    spare = pool.by_slot[0]
    until_ready(pool, [spare])
    assert pool.take(slot) is spare
    assert pool.hand_over(spare, task(pool.paths, case="return")) is True
    assert spare.task_fd == -1  # closed behind the one fold
    got: list = []
    deadline = time.monotonic() + 20
    eof = False
    while not eof and time.monotonic() < deadline:
        select.select([spare.child.fd], [], [], 0.5)
        messages, eof = read_messages(spare.child.fd, spare.buf)
        got += messages
    assert [type(m) for m in got] == [Started, Result], got
    assert got[0].pid == spare.child.pid
    assert got[1].outcome.status is Status.OK
    spare.child.process.join(10)
    assert spare.child.process.exitcode == 0
    spare.child.close()


def test_a_preload_that_cannot_be_imported_is_said_once(make_pool):
    pool, notes = make_pool(preload=["no_such_module_for_the_pool", "os"])
    pool.top_up([Slot(0), Slot(1)], pending=2)
    until_ready(pool, list(pool.by_slot.values()))
    said = [n for n in notes if "cannot import 'no_such_module_for_the_pool'" in n]
    assert len(said) == 1 and "ModuleNotFoundError" in said[0], notes
    assert pool.preload_errors == {"no_such_module_for_the_pool"}


def test_spares_that_keep_dying_are_switched_off(make_pool):
    pool, notes = make_pool()
    slot = Slot(0)
    for n in range(1, SPARE_DEATHS_TO_GIVE_UP + 1):
        pool.top_up([slot], pending=1)
        spare = pool.by_slot[0]
        os.kill(spare.child.pid, signal.SIGKILL)  # before it is ready (a ready one resets the count)
        deadline = time.monotonic() + 10
        while spare.child.sentinel not in select.select([spare.child.sentinel], [], [], 0.5)[0]:
            assert time.monotonic() < deadline
        pool.on_death(spare)  # as the engine does when the sentinel fires
        assert 0 not in pool.by_slot and pool.deaths_in_a_row == n
        assert not proctree.pid_alive(spare.child.pid)
    assert notes[0] == (f"a warm spare of slot 0 killed by SIGKILL before its fold came "
                        f"(see {Path(pool.paths.logs) / 'spares' / 'slot0.1.log'}); starting another")
    assert notes[-1].startswith("warm spares switched off: 3 spares in a row died before their "
                                "fold came (last killed by SIGKILL;")
    assert not pool.enabled
    pool.top_up([slot], pending=1)
    assert pool.by_slot == {}  # none any more: folds start cold


def test_a_ready_spare_resets_the_count_of_deaths(make_pool):
    pool, _ = make_pool()
    pool.deaths_in_a_row = SPARE_DEATHS_TO_GIVE_UP - 1
    pool.top_up([Slot(0)], pending=1)
    until_ready(pool, [pool.by_slot[0]])
    assert pool.deaths_in_a_row == 0
