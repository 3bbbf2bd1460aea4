"""What folds leave behind: the processes still alive once a fold's root has ended.

When a fold's process ends (a result, an error, a kill), whatever it started must end
too: its process group, and the descendants that came back to the orchestrator (a child
subreaper) when the fold died, found by the fold's marker or by their group or session.
They get SIGTERM, then SIGKILL when the fold's grace is over, and are reaped by pid
(never ``waitpid(-1)``: the exit statuses of the orchestrator's own children are not ours).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from . import proctree
from .outcome import Timing

log = logging.getLogger("foldrunner")


@dataclass
class Leftovers:
    """One fold's leftovers: TERM sent, KILL at ``kill_at``, given up at ``give_up_at``."""

    fold_id: str
    pgid: int
    procs: dict[int, psutil.Process] = field(default_factory=dict)
    kill_at: float = 0.0
    killed: bool = False
    give_up_at: float = 0.0


class Reaper:
    """Finds, ends and reaps the leftovers of every fold."""

    def __init__(self, own_children: Callable[[], set[int]]) -> None:
        self.own_children = own_children
        """The pids of the orchestrator's children that are not any fold's (servers...)."""
        self.entries: list[Leftovers] = []

    def __bool__(self) -> bool:
        return bool(self.entries)

    def collect(
        self,
        *,
        fold_id: str,
        root_pid: int,
        marker: str,
        members: dict[int, psutil.Process],
        killed: bool,
        kill_at: float,
    ) -> None:
        """After a fold's root ended: signal what it left (TERM, or KILL if it was killed)."""
        procs = {pid: p for pid, p in members.items() if proctree.alive(p, zombie_is_alive=True)}
        ours = self.own_children()
        for pid in proctree.child_pids():
            if pid in ours or pid in procs:
                continue
            ids = proctree.stat_ids(pid)
            if proctree.read_marker(pid) != marker and not (ids is not None and root_pid in ids[1:]):
                continue
            try:
                procs[pid] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                continue
            for d in proctree.descendants(pid):
                procs.setdefault(d.pid, d)
        sig = signal.SIGKILL if killed else signal.SIGTERM
        group = proctree.killpg(root_pid, sig)
        if not procs and not group:
            return
        proctree.send(procs.values(), sig)
        self.entries.append(
            Leftovers(fold_id, root_pid, procs, kill_at, killed, kill_at + Timing.REAP_WAIT)
        )

    def hurry(self, now: float) -> None:
        """SIGKILL at the next poll (a second Ctrl-C)."""
        for lo in self.entries:
            lo.kill_at = min(lo.kill_at, now)

    def poll(self, now: float) -> None:
        """SIGKILL what is past its grace, reap what died, drop what is gone."""
        me = os.getpid()
        children = proctree.child_pids()
        for lo in list(self.entries):
            for pid in children:  # zombies and orphans of the group that came back to us
                ids = proctree.stat_ids(pid)
                if pid not in lo.procs and ids is not None and lo.pgid in ids[1:]:
                    try:
                        lo.procs[pid] = psutil.Process(pid)
                    except psutil.NoSuchProcess:
                        pass
            if now >= lo.kill_at and not lo.killed:
                proctree.killpg(lo.pgid, signal.SIGKILL)
                for p in list(lo.procs.values()):
                    for d in proctree.descendants(p.pid):
                        lo.procs.setdefault(d.pid, d)
                proctree.send(lo.procs.values(), signal.SIGKILL)
                lo.killed = True
            for pid, p in list(lo.procs.items()):
                if proctree.alive(p):
                    continue
                try:
                    if p.ppid() == me:
                        proctree.reap(pid)
                except psutil.NoSuchProcess:
                    pass
                if not proctree.alive(p, zombie_is_alive=True):
                    del lo.procs[pid]
            if not lo.procs and not proctree.killpg(lo.pgid, 0):
                self.entries.remove(lo)
            elif now >= lo.give_up_at:
                log.warning(
                    "fold %s left processes that did not die after SIGKILL: %s",
                    lo.fold_id, sorted(lo.procs) or f"process group {lo.pgid}",
                )
                self.entries.remove(lo)
