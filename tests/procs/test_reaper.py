"""The reaper on its own, and the terminator's sweep over it: real escapees (processes in
sessions of their own whose parents died) come back to this test process, a subreaper."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from foldrunner.child.task import MARKER_ENV
from foldrunner.launch.launcher import server_pids
from foldrunner.procs import proctree
from foldrunner.procs.reaper import Reaper
from foldrunner.procs.terminate import Ending, Terminator

pytestmark = pytest.mark.timeout(60)

SLEEP = "import time; time.sleep(600)"
IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
# starts one process in a session of its own (with a fold's marker when one is given),
# prints its pid and exits: the process comes back to the nearest subreaper (this one)
ESCAPE = """
import os, subprocess, sys
code, marker, key = sys.argv[1:4]
env = dict(os.environ)
env.pop(key, None)
if marker:
    env[key] = marker
p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, env=env,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(p.pid, flush=True)
"""


def gone(pid: int) -> bool:
    return not proctree.pid_alive(pid)


@pytest.fixture
def subreaper():
    old = proctree.set_subreaper(True)
    yield
    proctree.set_subreaper(old)


@pytest.fixture
def escapees(subreaper):
    """Make escapees; whatever of them is left is killed and reaped afterwards."""
    made: list[int] = []

    def make(code: str = SLEEP, marker: str = "", state: str | None = None) -> int:
        out = subprocess.run([sys.executable, "-c", ESCAPE, code, marker, MARKER_ENV],
                             capture_output=True, text=True, timeout=30, check=True)
        pid = int(out.stdout)
        made.append(pid)
        deadline = time.monotonic() + 10
        while True:  # until it is our child (and in the state asked for)
            ids = proctree.stat_ids(pid)
            if pid in proctree.child_pids() and ids is not None and (state is None or ids[0] == state):
                return pid
            assert time.monotonic() < deadline, f"escapee {pid} never came back to us"
            time.sleep(0.02)

    yield make
    for pid in made:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5
        while not proctree.reap(pid) and time.monotonic() < deadline:
            time.sleep(0.02)


def ending(marker: str | None = None, pgids: set[int] | None = None) -> Ending:
    """A tree being ended, as the terminator keeps one (no process of it known yet)."""
    return Ending("tree", "tree", pgids or set(), marker)


def returned(reaper: Reaper, trees: dict, mine: set[int]) -> list[tuple[int, int, object]]:
    """What the reaper returns of the escapees ``mine`` (other children are not ours to judge)."""
    return [(p.pid, pgid, owner) for p, pgid, owner in reaper.returned(trees) if p.pid in mine]


# ---------------------------------------------------------------- the reaper
def test_an_escapee_is_named_with_the_tree_that_owns_it_or_as_a_stray(escapees):
    marked = escapees(marker="run/t0-r0-f0/1")
    stray = escapees()
    tree = ending(marker="run/t0-r0-f0/1")
    got = returned(Reaper(server_pids), {"fold": tree}, {marked, stray})
    assert sorted(got, key=lambda g: g[0] != marked) == [(marked, marked, tree), (stray, stray, None)]
    # the reaper only names them: both still run
    assert not gone(marked) and not gone(stray)


def test_a_tree_owns_by_group_or_session_too(escapees):
    pid = escapees()
    by_group = ending(pgids={pid})  # a fold's group: the fold's root pid
    assert returned(Reaper(server_pids), {"g": by_group}, {pid}) == [(pid, pid, by_group)]
    by_marker = ending(marker="another/fold/1")
    assert returned(Reaper(server_pids), {"m": by_marker}, {pid}) == [(pid, pid, None)]


def test_a_member_of_a_tree_and_our_own_children_are_skipped(escapees):
    pid = escapees()
    tree = ending(marker="x")
    tree.procs[pid] = psutil.Process(pid)  # a member already
    assert returned(Reaper(server_pids), {"t": tree}, {pid}) == []
    assert returned(Reaper(lambda: {pid} | server_pids()), {}, {pid}) == []
    assert not gone(pid)


def test_strays_off_and_our_own_session_leave_unowned_children_alone(escapees):
    pid = escapees()
    assert returned(Reaper(server_pids, strays=False), {}, {pid}) == []
    mine = subprocess.Popen([sys.executable, "-c", SLEEP])  # our session: the caller's own
    try:
        assert returned(Reaper(server_pids), {}, {mine.pid}) == []
        assert returned(Reaper(server_pids), {}, {pid}) == [(pid, pid, None)]
    finally:
        mine.kill()
        mine.wait(10)


def test_a_dead_escapee_is_reaped_not_returned(escapees):
    pid = escapees("pass", state="Z")  # ended on its own: a zombie of ours
    assert returned(Reaper(server_pids), {}, {pid}) == []
    assert pid not in proctree.child_pids() and proctree.stat_ids(pid) is None


def test_trees_are_read_afresh_for_each_child(escapees):
    # a stray the caller starts to end is a tree for the children after it
    a, b = escapees(), escapees()
    trees: dict[object, Ending] = {}
    late = ending(pgids={a, b})
    got = []
    for p, _, owner in Reaper(server_pids).returned(trees):
        if p.pid in (a, b):
            got.append(owner)
            trees["late"] = late
    assert got == [None, late]


# ---------------------------------------------------------------- the terminator's sweep
def test_sweep_ends_an_escapee_that_came_back_to_us_and_reaps_the_dead(escapees):
    term = Terminator(server_pids, stray_grace=0.5)  # earlier tests' fork servers are ours
    hanger = escapees(IGNORE_TERM)  # ignores SIGTERM
    short = escapees("pass", state="Z")  # ended on its own
    taken = term.sweep()
    assert hanger in taken and short not in taken
    assert ("stray", hanger) in term
    assert short not in proctree.child_pids()  # reaped
    t0 = time.monotonic()
    assert term.wait(time.monotonic() + 5)
    assert gone(hanger) and time.monotonic() - t0 >= 0.4  # SIGKILL after its grace


def test_sweep_leaves_our_own_children_alone(subreaper):
    mine = subprocess.Popen([sys.executable, "-c", SLEEP])
    try:
        term = Terminator(server_pids)
        assert mine.pid not in term.sweep()
        assert not term
    finally:
        mine.kill()
        mine.wait()


def test_a_tree_being_ended_adopts_its_escapees_by_marker(escapees):
    term = Terminator(server_pids)
    marker = "run/t0-r0-f0/1"
    esc = escapees(IGNORE_TERM)  # no marker
    marked = escapees(IGNORE_TERM, marker=marker)
    assert proctree.read_marker(esc) is None and proctree.read_marker(marked) == marker
    e = term.end("fold", marker=marker, grace=0.5)
    term.sweep()
    assert marked in e.procs  # traced to its fold by the marker
    assert ("stray", esc) in term  # no fold owns it: ended as a stray
    assert term.wait(time.monotonic() + 8)
    assert gone(marked) and gone(esc)
