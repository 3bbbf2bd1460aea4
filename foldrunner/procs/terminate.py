"""The one termination path: how foldrunner ends a process tree, wherever it does.

A fold's timeout, a memory kill, a lingering fold, what a fold leaves behind when it
ends, a GPU slot's leftover holders, a retired spare, the orphans of a dead orchestrator,
the preflight child and the shutdown all end processes the same way::

    SIGTERM to the process group and to every member found
    -> members found later (descendants, escapees that came back to us) get it too
    -> SIGKILL to all of them once ``grace`` is over
    -> reap the ones that are our children (by pid, never ``waitpid(-1)``)
    -> done when no member and no process of the group is left

:class:`Terminator` does it without blocking (the scheduler's loop calls
:meth:`Terminator.poll`); :func:`end_now` does it to completion for callers that can
wait. The orchestrator is a child subreaper: processes that escaped a fold (``setsid``,
double forks) come back to it when their parents die, and :meth:`Terminator.sweep`
ends each as the reaper (:mod:`foldrunner.procs.reaper`) traces it: with the fold it came
from (its marker, group or session) or as a stray, so nothing escapes.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psutil

from foldrunner.defaults import Timing
from foldrunner.procs import proctree
from foldrunner.procs.reaper import Reaper

log = logging.getLogger("foldrunner")

POLL = 0.02
"""Seconds between two polls of :meth:`Terminator.wait` (and :func:`end_now`), at most."""
FIRST_POLL = 0.001
"""The first pause of :meth:`Terminator.wait`, doubled up to :data:`POLL`: a fold that
just exited is usually gone a moment later (its parent reaps it), and a Ray task that
waits for it holds its CPUs and GPU until then."""


@dataclass
class Ending:
    """One tree being ended: TERM sent, KILL at ``kill_at``, given up at ``give_up_at``."""

    key: object
    label: str
    pgids: set[int]
    marker: str | None
    procs: dict[int, psutil.Process] = field(default_factory=dict)
    kill_at: float = 0.0
    killed: bool = False
    give_up_at: float = 0.0

    @property
    def signal(self) -> int:
        return signal.SIGKILL if self.killed else signal.SIGTERM

    def add(self, procs: Iterable[psutil.Process]) -> list[psutil.Process]:
        """Add members (and their descendants); return the ones that are new."""
        new = []
        for p in procs:
            for q in (p, *proctree.descendants(p.pid)):
                if q.pid not in self.procs and proctree.alive(q, zombie_is_alive=True):
                    self.procs[q.pid] = q
                    new.append(q)
        return new

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` (not yet a member) belongs to this tree: marker, group, session."""
        ids = proctree.stat_ids(pid)
        if ids is not None and (ids[1] in self.pgids or ids[2] in self.pgids):
            return True
        return self.marker is not None and proctree.read_marker(pid) == self.marker


class Terminator:
    """Ends process trees politely, then surely; sweeps up what comes back to us."""

    def __init__(self, own_children: Callable[[], set[int]] = set, strays: bool = True,
                 stray_grace: float = Timing.STRAY_GRACE, sweep_every: float = 0.0) -> None:
        self.own_children = own_children
        """Pids of this process's children that are not to be swept or reaped (servers,
        folds' roots: their owners wait for them)."""
        self.reaper = Reaper(own_children, strays)
        """Finds what came back to us; ``strays``: whether children of ours that no tree
        owns are ended (the orchestrator's loop)."""
        self.stray_grace = stray_grace
        self.sweep_every = sweep_every
        """Seconds between two sweeps of :meth:`poll` while no tree is being ended (a
        sweep reads the children of every thread of this process: a driver with Ray's
        threads and an attempt's relay each polls often); a tree being ended is swept on
        every poll."""
        self._swept = -float("inf")
        self.entries: dict[object, Ending] = {}

    def keep(self, own_children: Callable[[], set[int]]) -> None:
        """From now on, ``own_children()`` names the children no sweep may take (the
        owner of the loop knows them only once it exists: its folds, servers, spares)."""
        self.own_children = self.reaper.own_children = own_children

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    # -- starting --------------------------------------------------------------------
    def end(
        self,
        key: object,
        *,
        procs: Iterable[psutil.Process] = (),
        pgids: Iterable[int] = (),
        marker: str | None = None,
        grace: float,
        now: float | None = None,
        label: str = "",
    ) -> Ending:
        """Start ending a tree (or add to one already ending under ``key``).

        Every member and group gets SIGTERM now (SIGKILL when ``grace`` is 0 or the tree
        is already past its grace), and SIGKILL once ``grace`` is over.
        """
        now = time.monotonic() if now is None else now
        e = self.entries.get(key)
        if e is None:
            e = Ending(key, label or str(key), set(pgids), marker, kill_at=now + grace,
                       give_up_at=now + grace + Timing.REAP_WAIT)
            e.killed = grace <= 0
            self.entries[key] = e
        else:
            e.pgids.update(pgids)
            e.marker = e.marker or marker
            if now + grace < e.kill_at:
                self.hurry(key, now + grace)
        procs = list(procs)
        if not procs:  # only groups named: find their members (a /proc scan, rare)
            procs = [q for g in e.pgids for q in proctree.group_members(g)]
        new = e.add(procs)  # before any signal: a dead root's descendants are not found
        for pgid in e.pgids:
            proctree.killpg(pgid, e.signal)
        proctree.send(new, e.signal)
        return e

    def hurry(self, key: object | None = None, when: float | None = None) -> None:
        """SIGKILL at ``when`` (default: the next poll) for ``key`` or for every tree."""
        when = time.monotonic() if when is None else when
        for e in [self.entries[key]] if key in self.entries else (
            [] if key is not None else list(self.entries.values())
        ):
            e.kill_at = min(e.kill_at, when)
            e.give_up_at = min(e.give_up_at, when + Timing.REAP_WAIT)

    # -- progress --------------------------------------------------------------------
    def poll(self, now: float | None = None) -> None:
        """Sweep what came back to us, signal new members, SIGKILL past grace, reap.

        The sweep runs on every poll: a tree is done only when nothing of it is left,
        escapees that came back since the last poll included."""
        now = time.monotonic() if now is None else now
        if self.entries or now >= self._swept + self.sweep_every:
            self._swept = now
            self.sweep(now)
        keep = self.own_children()
        for e in list(self.entries.values()):
            proctree.send(e.add(list(e.procs.values())), e.signal)
            if now >= e.kill_at and not e.killed:
                e.killed = True
                for pgid in e.pgids:
                    proctree.killpg(pgid, signal.SIGKILL)
                proctree.send(list(e.procs.values()), signal.SIGKILL)
            self._reap(e, keep)
            if not e.procs:
                for g in e.pgids:  # members never seen before (or only zombies left)
                    proctree.send(e.add(proctree.group_members(g)), e.signal)
            if not e.procs:
                del self.entries[e.key]
            elif now >= e.give_up_at:
                log.warning("%s: processes did not end after SIGKILL: %s", e.label,
                            sorted(e.procs) or f"process group {sorted(e.pgids)}")
                del self.entries[e.key]

    def sweep(self, now: float | None = None) -> list[int]:
        """End what came back to us (:class:`~foldrunner.procs.reaper.Reaper`): a child of
        ours that a tree owns joins it; one that no tree owns came back from a fold and
        is ended as a stray, with the stray grace. Returns the pids taken."""
        taken: list[int] = []
        for p, pgid, owner in self.reaper.returned(self.entries):
            if owner is not None:
                proctree.send(owner.add([p]), owner.signal)
            else:
                marker = proctree.read_marker(p.pid)
                self.end(("stray", p.pid), procs=[p], pgids=[pgid] if pgid == p.pid else [],
                         marker=None, grace=self.stray_grace, now=now,
                         label=f"process {p.pid} left by {marker or 'a fold'}")
            taken.append(p.pid)
        return taken

    @staticmethod
    def _reap(e: Ending, keep: set[int]) -> None:
        """Drop the members that ended; reap those that are our children, except the
        ones in ``keep`` (their owner waits for them: a fold's root, for its exit code)."""
        me = os.getpid()
        for pid, p in list(e.procs.items()):
            if proctree.alive(p):
                continue
            if pid in keep:
                del e.procs[pid]
                continue
            try:
                if p.ppid() == me:
                    proctree.reap(pid)
            except psutil.NoSuchProcess:
                pass
            if not proctree.alive(p, zombie_is_alive=True):
                del e.procs[pid]

    def wait(self, deadline: float) -> bool:
        """Poll until every tree has ended or ``deadline``; True when all ended."""
        pause = FIRST_POLL
        while self.entries and time.monotonic() < deadline:
            self.poll()
            if self.entries:
                time.sleep(pause)
                pause = min(POLL, pause * 2)
        return not self.entries


def end_now(
    procs: Iterable[psutil.Process] = (),
    pgids: Iterable[int] = (),
    *,
    grace: float,
    label: str = "processes",
    marker: str | None = None,
    keep: Iterable[int] = (),
) -> int:
    """End a tree to completion (TERM, ``grace``, KILL, reap); return how many got TERM.

    ``keep``: pids not to reap (their owner waits for them).
    """
    kept = set(keep)
    t = Terminator(own_children=lambda: kept, strays=False)
    e = t.end("tree", procs=procs, pgids=pgids, grace=grace, marker=marker, label=label)
    n = len(e.procs)
    t.wait(time.monotonic() + grace + Timing.REAP_WAIT + 1.0)
    return n
