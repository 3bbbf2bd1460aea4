"""The fold's end of the orchestrator's lifeline: a fold never outlives its orchestrator.

The lifeline is a pipe whose write end only the orchestrator holds (see
``foldrunner.launch.launcher.lifeline``); every fold's process holds its read end. When
the orchestrator dies, however it dies (``kill -9``, the OOM killer, a crash), the read
end reaches end of file, and the fold ends its own tree: SIGTERM to every descendant,
``grace``, SIGKILL, then itself.

Imported by every fold's process: keep it free of heavy imports (:mod:`foldrunner.procs.proctree`
is imported when a :class:`Lifeline` is made, not with this module).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time


class Lifeline:
    """Watches the lifeline's read end ``fd`` from a thread of its own.

    At end of file it ends this fold's descendants (SIGTERM, ``grace``, SIGKILL) and this
    process. A fold that finishes while the orchestrator is already gone does the same
    before it exits (:meth:`at_exit`): its descendants would otherwise outlive it with
    nobody left to end them.
    """

    def __init__(self, fd: int, grace: float) -> None:
        # imported now, not when the orchestrator dies: by then this process may be
        # shutting down, when imports fail (and proctree imports foldrunner.child.task)
        from foldrunner.procs import proctree

        self.fd, self.grace, self.proctree = fd, grace, proctree
        self.lock = threading.Lock()
        os.set_inheritable(fd, False)
        threading.Thread(target=self._watch, name="foldrunner-lifeline", daemon=True).start()

    def _watch(self) -> None:
        try:
            while os.read(self.fd, 64):
                pass
        except OSError:
            pass
        self.end_tree()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1.0)
        os._exit(128 + signal.SIGTERM)

    def orchestrator_gone(self) -> bool:
        """Whether the lifeline is at end of file (nothing is ever written to it)."""
        return bool(select.select([self.fd], [], [], 0)[0])

    def at_exit(self) -> None:
        """Before this fold's process exits: end its tree if nobody else will."""
        if self.orchestrator_gone():
            self.end_tree()

    def end_tree(self) -> None:
        """SIGTERM to every descendant, ``grace``, SIGKILL; reap (once, by one thread)."""
        with self.lock:
            me = os.getpid()
            print(f"foldrunner: the orchestrator is gone; ending the tree of fold process {me}",
                  file=sys.stderr, flush=True)
            deadline = time.monotonic() + self.grace
            sig = signal.SIGTERM
            while True:
                kids = self.proctree.descendant_pids(me)
                for pid in kids:
                    try:
                        os.kill(pid, sig)
                    except OSError:
                        pass
                reap_children()
                if not kids or sig == signal.SIGKILL and time.monotonic() > deadline + 2.0:
                    return
                if time.monotonic() >= deadline:
                    sig = signal.SIGKILL
                time.sleep(0.05)


def reap_children() -> None:
    """Reap every ended child of this process (a fold is its tree's subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
