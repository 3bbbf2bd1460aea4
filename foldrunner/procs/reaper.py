"""The reaper: what comes back to the orchestrator, traced to its fold, or taken as a stray.

The orchestrator is a child subreaper: processes that escaped a fold (``setsid``, double
forks) come back to it as its children when their parents die. :meth:`Reaper.returned`
looks at every child of ours that is not ours to keep and says, for each one that is
foldrunner's business, which tree being ended owns it (by its fold's marker, group or
session), or that none does (a stray); the zombies among them it reaps itself. The
caller, :class:`foldrunner.procs.terminate.Terminator`, ends what it is told of.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol, TypeVar

import psutil

from foldrunner.procs import proctree


class Tree(Protocol):
    """A process tree being ended, as the reaper asks it: its members, and whether a pid
    not yet among them belongs to it."""

    @property
    def procs(self) -> Mapping[int, psutil.Process]: ...

    def owns(self, pid: int) -> bool: ...


T = TypeVar("T", bound=Tree)


class Reaper:
    """Finds the children of ours that came back from folds; reaps the dead ones."""

    def __init__(self, own_children: Callable[[], set[int]] = set, strays: bool = True) -> None:
        self.own_children = own_children
        """Pids of this process's children that are not to be swept (servers, folds)."""
        self.strays = strays
        """Whether children of ours that no tree owns are taken (the orchestrator's loop)."""
        self.my_sid = os.getsid(0)

    def returned(self, trees: Mapping[object, T]) -> Iterator[tuple[psutil.Process, int, T | None]]:
        """``(process, its group, the tree that owns it or None)`` for every live child
        of ours to be ended; zombies among them are reaped here and not yielded.

        A child is skipped when it is ours to keep, already a member of a tree, or owned
        by no tree and either ``strays`` is off or it lives in our own session (started
        by this process itself: the caller's business; every fold runs in a session of
        its own). ``trees`` is read afresh for each child, so a stray the caller starts
        to end is a tree for the children after it.
        """
        own = self.own_children()
        for pid in proctree.child_pids():
            if pid in own or any(pid in t.procs for t in trees.values()):
                continue
            ids = proctree.stat_ids(pid)
            if ids is None:
                continue
            state, pgid, sid = ids
            owner = next((t for t in trees.values() if t.owns(pid)), None)
            if owner is None and (not self.strays or sid == self.my_sid):
                continue  # not a fold's, or started by this process itself (the caller's)
            if state == "Z":
                proctree.reap(pid)  # a fold's escapee that ended on its own
                continue
            try:
                p = psutil.Process(pid)
            except psutil.NoSuchProcess:
                continue
            yield p, pgid, owner
