"""The one termination path, on its own: real process trees, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from foldrunner.procs import proctree
from foldrunner.launch.launcher import server_pids
from foldrunner.procs.terminate import Terminator, end_now

pytestmark = pytest.mark.timeout(60)

IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
# a parent that starts one child in its group and one in a session of its own, prints
# their pids, then sleeps (ignoring SIGTERM when told to)
TREE = f"""
import os, signal, subprocess, sys, time
ignore = sys.argv[1] == "1"
if ignore:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
a = subprocess.Popen([sys.executable, "-c", {IGNORE_TERM!r} if ignore else "import time; time.sleep(600)"])
b = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print(a.pid, b.pid, flush=True)
time.sleep(600)
"""
# a parent that leaves one `setsid` grandchild behind and exits: the grandchild comes
# back to the nearest subreaper (this test process)
ORPHAN = """
import subprocess, sys
p = subprocess.Popen([sys.executable, "-c", sys.argv[1]], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     env=dict(MARK=sys.argv[2]))
print(p.pid, flush=True)
"""


def tree(ignore_term: bool) -> tuple[subprocess.Popen, list[int]]:
    root = subprocess.Popen([sys.executable, "-c", TREE, "1" if ignore_term else "0"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    kids = [int(x) for x in root.stdout.readline().split()]
    return root, kids


def gone(pid: int) -> bool:
    return not proctree.pid_alive(pid)


@pytest.fixture
def subreaper():
    old = proctree.set_subreaper(True)
    yield
    proctree.set_subreaper(old)


def test_end_now_ends_the_group_and_a_setsid_descendant_politely():
    root, kids = tree(ignore_term=False)
    t0 = time.monotonic()
    n = end_now([psutil.Process(root.pid)], [root.pid], grace=5.0, label="tree", keep=[root.pid])
    took = time.monotonic() - t0
    root.wait(5)
    assert n == 3 and all(gone(k) for k in kids)
    assert root.returncode == -signal.SIGTERM
    assert took < 2.0  # nobody needed the grace: no SIGKILL wait


def test_end_now_kills_what_ignores_sigterm_once_grace_is_over():
    root, kids = tree(ignore_term=True)
    t0 = time.monotonic()
    end_now([psutil.Process(root.pid)], [root.pid], grace=0.8, label="tree", keep=[root.pid])
    took = time.monotonic() - t0
    root.wait(5)
    assert root.returncode == -signal.SIGKILL
    assert all(gone(k) for k in kids)
    assert 0.8 <= took < 3.0, took


def test_the_terminator_never_blocks_and_hurry_kills_at_once():
    root, kids = tree(ignore_term=True)
    term = Terminator(lambda: {root.pid}, strays=False)  # Popen waits for the root
    t0 = time.monotonic()
    e = term.end("k", procs=[psutil.Process(root.pid)], pgids=[root.pid], grace=30.0)
    assert time.monotonic() - t0 < 0.5 and not e.killed
    term.poll()
    assert "k" in term  # still in grace: SIGTERM ignored
    term.hurry("k")  # a second Ctrl-C
    assert term.wait(time.monotonic() + 5)
    root.wait(5)
    assert root.returncode == -signal.SIGKILL and all(gone(k) for k in kids)


def test_group_members_never_seen_before_are_found_and_ended_with_their_descendants():
    root, kids = tree(ignore_term=False)
    term = Terminator(strays=False)
    # only the group is named: its members are found by the group (a /proc scan)
    term.end("g", pgids=[root.pid], grace=2.0)
    assert term.wait(time.monotonic() + 5)
    root.wait(5)
    assert gone(kids[0])  # in the group
    assert gone(kids[1])  # in a session of its own, but a descendant of a member


def test_sweep_ends_an_escapee_that_came_back_to_us_and_reaps_the_dead(subreaper):
    term = Terminator(server_pids, stray_grace=0.5)  # earlier tests' fork servers are ours
    # one escapee that ignores SIGTERM and one that ends on its own
    out = subprocess.run([sys.executable, "-c", ORPHAN, IGNORE_TERM, "x"],
                         capture_output=True, text=True, timeout=30)
    hanger = int(out.stdout)
    out = subprocess.run([sys.executable, "-c", ORPHAN, "pass", "x"],
                         capture_output=True, text=True, timeout=30)
    short = int(out.stdout)
    time.sleep(0.5)
    assert hanger in proctree.child_pids()  # it came back to us, the subreaper
    taken = term.sweep()
    assert hanger in taken
    assert term.wait(time.monotonic() + 5)
    assert gone(hanger)
    term.sweep()  # the short-lived one is a zombie of ours by now: reaped
    assert short not in proctree.child_pids()


def test_sweep_leaves_our_own_children_alone(subreaper):
    mine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        term = Terminator(server_pids)
        assert mine.pid not in term.sweep()
        assert not term
    finally:
        mine.kill()
        mine.wait()


def test_a_tree_being_ended_adopts_its_escapees_by_marker(subreaper):
    term = Terminator(server_pids)
    out = subprocess.run([sys.executable, "-c", ORPHAN, IGNORE_TERM, "fold-a"],
                         capture_output=True, text=True, timeout=30)
    esc = int(out.stdout)
    time.sleep(0.3)
    from foldrunner.child.entry import MARKER_ENV

    # the marker is the one the escapee's environment carries (MARK here, by design of
    # the test: the Ending matches on the fold marker variable)
    assert proctree.read_marker(esc) is None
    env_marker = "run/t0-r0-f0/1"
    out2 = subprocess.run(
        [sys.executable, "-c", ORPHAN.replace("env=dict(MARK=sys.argv[2])",
                                              f"env={{{MARKER_ENV!r}: sys.argv[2]}}"),
         IGNORE_TERM, env_marker],
        capture_output=True, text=True, timeout=30)
    marked = int(out2.stdout)
    time.sleep(0.3)
    e = term.end("fold", marker=env_marker, grace=0.5)
    term.sweep()
    assert marked in e.procs  # traced to its fold by the marker
    assert ("stray", esc) in term  # no fold owns it: ended as a stray
    assert term.wait(time.monotonic() + 8)
    assert gone(marked) and gone(esc)
