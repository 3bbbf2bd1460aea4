"""The one termination path, on its own: real process trees, real signals. (What comes
back to us and the terminator's sweep of it: ``test_reaper.py``.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest

from foldrunner.procs import proctree
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


def tree(ignore_term: bool) -> tuple[subprocess.Popen, list[int]]:
    root = subprocess.Popen([sys.executable, "-c", TREE, "1" if ignore_term else "0"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    kids = [int(x) for x in root.stdout.readline().split()]
    return root, kids


def gone(pid: int) -> bool:
    return not proctree.pid_alive(pid)


def test_end_now_ends_the_group_and_a_setsid_descendant_politely():
    root, kids = tree(ignore_term=False)
    t0 = time.monotonic()
    n = end_now([psutil.Process(root.pid)], [root.pid], grace=5.0, label="tree", keep=[root.pid])
    took = time.monotonic() - t0
    root.wait(5)
    assert n == 3 and all(gone(k) for k in kids)
    assert root.returncode == -signal.SIGTERM
    # nobody needed the grace: no SIGKILL wait (it would come at 5 s). Not much less: the
    # root's children are orphans for init to reap, which some containers' init does
    # only every two seconds or so
    assert took < 4.0


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
