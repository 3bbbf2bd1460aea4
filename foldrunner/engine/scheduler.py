"""Which fold runs next, where, and when to stop: the scheduler of one run.

One thread runs :meth:`Scheduler.run`, a loop of named steps::

    launch what is ready -> wait for a pipe, a death or the wake pipe -> read what
    came -> finish what died (retry or not) -> enforce each attempt's clocks
    -> end what folds left behind

The scheduler owns the queue of waiting folds, the slots, retries with backoff, the
run's deadline and its stop. One fold's life is an :class:`~foldrunner.engine.attempt.Attempt`;
the scheduler only waits on what attempts and the launcher give it.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol


from multiprocess.connection import wait

from foldrunner.config.plan import Fold
from foldrunner.defaults import Timing
from foldrunner.engine.attempt import Attempt, TaskTemplate, Watchers
from foldrunner.engine.backend import Backend, InFlight
from foldrunner.engine.events import Events, Fanout, Guarded
from foldrunner.engine.limits import Limits
from foldrunner.errors import BackendLost, StorageError
from foldrunner.gpu.inventory import Inventory, Slot
from foldrunner.gpu.slots import GpuSlots
from foldrunner.gpu.watch import GpuWatch
from foldrunner.procs.memory import OomCounter
from foldrunner.procs import proctree
from foldrunner.procs.terminate import Terminator
from foldrunner.store.journal import Journal
from foldrunner.store.paths import RunPaths
from foldrunner.store.recorder import JournalRecorder
from foldrunner.wire.outcome import AttemptResult, Status

log = logging.getLogger("foldrunner")


@dataclass
class Waiting:
    """A fold waiting for a slot."""

    fold: Fold
    attempt: int
    not_before: float = 0.0
    avoid_gpu: int | None = None
    used: int = 0
    """Earlier attempts that count against ``retry.attempts`` (cancelled ones do not)."""


@dataclass(frozen=True)
class Withdraw:
    """A fold source's request: end the folds that ``match`` selects, now. Waiting ones are
    never launched; running ones end through :meth:`Scheduler.withdraw` (the stop path)."""

    match: Callable[[Fold], bool]
    status: Status
    reason: str


class FoldSource(Protocol):
    """Work that is made as it is needed (an adaptive search's trials): the scheduler
    asks it for more only when a slot would otherwise be idle."""

    def more(self) -> list[Fold]:
        """New folds to queue (a new trial's, in launch order); [] when none may come now."""

    def left(self) -> int:
        """Folds that may still come (0: nothing more will)."""

    def ended(self, fold: Fold, result: AttemptResult, final: bool) -> list[Withdraw]:
        """An attempt has ended (after the journal has it): the folds to end because of it."""

    def withdrawn(self, request: Withdraw, never_launched: list[tuple[Fold, int]]) -> None:
        """``request`` is carried out: the waiting folds it took out of the queue, each with
        the attempt number it would have been launched as."""

    def holds(self, fold: Fold) -> bool:
        """Whether waiting ``fold`` had better wait while other work can take its slot (a
        fold whose trial may be pruned by a fold still running): it is launched only when
        nothing else may be."""


class Scheduler:
    """Runs folds, each attempt in a fresh process, within ``slots``."""

    def __init__(self, *, journal: Journal, paths: RunPaths, slots: list[Slot], limits: Limits,
                 template: TaskTemplate, launcher: Backend, terminator: Terminator,
                 events: Events | None = None, deadline: float | None = None,
                 inventory: Inventory | None = None, notes: Callable[[str], None] | None = None,
                 rng: random.Random | None = None) -> None:
        self.paths, self.slots, self.limits, self.template = paths, slots, limits, template
        self.launcher, self.term, self.deadline = launcher, terminator, deadline
        self.rng = rng or random.Random()
        self.notes = notes or (lambda text: log.warning("%s", text))
        self.recorder = JournalRecorder(journal, self._storage_failed)
        self.others = Guarded(events or Events(), self.notes)
        """The run's other subscribers (results files, the terminal): told after the
        journal, and a fault of theirs never stops the engine."""
        self.events = Fanout(self.recorder, self.others)
        gpu_watch = GpuWatch(inventory if any(sl.gpu is not None for sl in slots) else None,
                             self.notes)
        self.watchers = Watchers(terminator, gpu_watch, OomCounter(), self.events)
        self.gpu_slots = GpuSlots(slots, gpu_watch, self.notes, limits.grace, terminator)
        self.waiting: deque[Waiting] = deque()
        self.running: dict[int, InFlight] = {}  # by root pid (or a stand-in's number)
        self.source: FoldSource | None = None
        self.stop_status: Status | None = None
        self.stop_reason = ""
        self._stop_pending = self._stop_hard = False
        self._our_children: set[int] = set()
        terminator.keep(self._keep_children)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    @property
    def storage_error(self) -> StorageError | None:
        """The first journal write that failed (a full disk, a read-only run dir)."""
        return self.recorder.error

    # -- the loop ------------------------------------------------------------------
    def run(self, work: Iterable[tuple[Fold, int, int]], source: FoldSource | None = None) -> None:
        """Run each ``(fold, first attempt number, attempts used)`` until it ends for good,
        and then what ``source`` (if any) gives as slots come free.

        ``attempts used`` are the earlier attempts that count against ``retry.attempts``
        (cancelled attempts do not count). Raises the journal's StorageError, if any.
        """
        self.waiting.extend(Waiting(fold, n, used=used) for fold, n, used in work)
        self.source = source
        self._our_children = set(proctree.child_pids())
        was_subreaper = proctree.set_subreaper(True)
        try:
            while self._work_left():
                now = time.monotonic()
                if self.deadline is not None and now >= self.deadline and self.stop_status is None:
                    self.request_stop(Status.CANCELLED, "past the run's deadline")
                fault = self.launcher.fault()
                if fault is not None and self.stop_status is None:
                    self.request_stop(Status.CRASHED, fault, hard=True)
                self._apply_stop(now)
                self._launch_ready(now)
                self.events.tick(time.monotonic())  # batched writes: after the launches
                self.launcher.keep_warm(self.slots, self._queued() if self.stop_status is None else 0, now)
                self._wait(self._next_wakeup(now))
                self._turn(time.monotonic())
                self.gpu_slots.check_drains(time.monotonic())
        finally:
            self._shutdown()
            if not was_subreaper:
                proctree.set_subreaper(False)
            wake_w, self._wake_w = self._wake_w, -1  # a late signal's write fails harmlessly
            os.close(self._wake_r)
            os.close(wake_w)
        if self.storage_error is not None:
            raise self.storage_error
        fault = self.launcher.fault()
        if fault is not None:
            raise BackendLost(f"{fault}: every fold in flight ended as crashed; the finished "
                              "results are kept; run again with --resume when it is back")

    def _turn(self, now: float) -> None:
        """After a wait: each attempt's clocks, the terminator."""
        for a in list(self.running.values()):
            a.enforce(now)
        self.term.poll(time.monotonic())

    def _queued(self) -> int:
        """Folds waiting, and those the source may still give."""
        return len(self.waiting) + (self.source.left() if self.source is not None else 0)

    def _work_left(self) -> bool:
        if self.running or self.term or self.gpu_slots.draining:
            return True
        if not self._queued() or self.stop_status is not None:
            return False
        if all(sl.out for sl in self.slots):
            self.request_stop(Status.CANCELLED, "every GPU was taken out of the rotation")
            return False
        return True

    # -- stopping ------------------------------------------------------------------
    def request_stop(self, status: Status = Status.CANCELLED, reason: str = "interrupted",
                     hard: bool = False) -> None:
        """Stop launching and end every running fold as ``status``.

        Safe to call from a signal handler: it only records the request and wakes the
        loop, which ends the folds (SIGTERM, then SIGKILL after ``grace``; at once when
        ``hard``, e.g. on a second Ctrl-C).
        """
        if self.stop_status is None:
            self.stop_status, self.stop_reason = status, reason
        self._stop_hard = self._stop_hard or hard
        self._stop_pending = True
        try:
            os.write(self._wake_w, b"!")
        except (BlockingIOError, OSError):
            pass

    def _storage_failed(self, exc: StorageError) -> None:
        self.request_stop(Status.CANCELLED, "stopped: cannot write the journal")

    def _apply_stop(self, now: float) -> None:
        if not self._stop_pending:
            return
        self._stop_pending = False
        status = self.stop_status or Status.CANCELLED
        for a in list(self.running.values()):
            if not a.ending or self._stop_hard:
                # a fold whose result came keeps it (ok); the others end as ``status``
                a.end(Status.OK if a.seen.outcome is not None else status, self.stop_reason, now,
                      hard=self._stop_hard)
        self.launcher.stop(now)
        if self._stop_hard:
            self.term.hurry(None, now)  # every tree, the folds' and their leftovers

    def withdraw(self, request: Withdraw, now: float) -> list[tuple[Fold, int]]:
        """End the folds ``request.match`` selects: waiting ones leave the queue (returned,
        with the attempt number each would have had), running ones end as ``request.status``
        through their termination path (a fold whose result came stays ``ok``)."""
        taken = [w for w in self.waiting if request.match(w.fold)]
        self.waiting = deque(w for w in self.waiting if not request.match(w.fold))
        for a in list(self.running.values()):
            if request.match(a.fold) and not a.ending:
                a.end(Status.OK if a.seen.outcome is not None else request.status, request.reason, now)
        return [(w.fold, w.attempt) for w in taken]

    # -- step 1: launch ------------------------------------------------------------
    def _launch_ready(self, now: float) -> None:
        for slot in self.slots:
            if self.stop_status is not None:  # e.g. the journal could not be written
                return
            if not slot.free:
                continue
            holds = self.source.holds if self.source is not None else None
            item = self._take_waiting(now, slot, holds) if self.waiting else None
            if item is None and self.source is not None and self.source.left():
                # the slot would be idle: only now is the source asked for more
                self.waiting.extend(Waiting(fold, 1) for fold in self.source.more())
                item = self._take_waiting(now, slot, holds)
            if item is None and holds is not None:  # nothing else: a held fold, not an idle slot
                item = self._take_waiting(now, slot)
            if item is not None:  # else nothing may go to this slot yet: try the next one
                self._launch(item, slot, now)

    def _take_waiting(self, now: float, slot: Slot,
                      holds: Callable[[Fold], bool] | None = None) -> Waiting | None:
        for i, item in enumerate(self.waiting):
            if item.not_before > now or (holds is not None and holds(item.fold)):
                continue
            if (item.avoid_gpu is not None and item.avoid_gpu == slot.gpu
                    and any(s.free and s.gpu != slot.gpu for s in self.slots)):
                continue
            del self.waiting[i]
            return item
        return None

    def _launch(self, item: Waiting, slot: Slot, now: float) -> None:
        log_path = self.paths.log(item.fold.fold_id, item.attempt)
        a = self.launcher.attempt(
            Attempt(item.fold, item.attempt, item.used + 1, slot, self.limits, self.watchers,
                    log_path, self.template.marker(item.fold, item.attempt)),
            self.template.task(item.fold, item.attempt, slot, log_path), now)
        self.running[a.pid] = a
        a.announce()

    # -- step 2: wait --------------------------------------------------------------
    def _next_wakeup(self, now: float) -> float:
        times = [now + 1.0, *(a.next_wakeup() for a in self.running.values())]
        if self.term or self.launcher.busy():
            times.append(now + 0.05)
        if self.gpu_slots.draining:
            times.append(now + 0.1)
        if self.stop_status is None and any(sl.free for sl in self.slots):
            times.extend(w.not_before for w in self.waiting)
        if self.deadline is not None and self.stop_status is None:
            times.append(self.deadline)
        return max(0.0, min(times) - now)

    def _wait(self, timeout: float) -> None:
        by_fd = {a.fd: a for a in self.running.values() if a.fd is not None}
        by_sentinel = {a.sentinel: a for a in self.running.values()}
        ready = set(wait([self._wake_r, *by_fd, *by_sentinel, *self.launcher.waitables()], timeout))
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        self.launcher.on_ready(ready)
        for obj in ready:  # step 3: read what came
            if obj in by_fd:
                by_fd[obj].read()
        for obj in ready:  # step 4: finish what died
            if obj in by_sentinel:
                self._finish(by_sentinel[obj])

    # -- step 4: finish ------------------------------------------------------------
    def _finish(self, a: InFlight) -> None:
        """An attempt's process has ended: record it, free its slot, retry or not."""
        del self.running[a.pid]
        ended = a.finish()
        if ended.result is None:  # a spare died in its handover: not the fold's fault
            self.events.attempt_withdrawn(a.fold, a.number, ended.withdrawn)
            self.launcher.withdrawn(a.slot, ended.withdrawn)
            self.waiting.appendleft(Waiting(a.fold, a.number, used=a.used - 1))
            return
        result = ended.result
        self.gpu_slots.fold_ended(a.slot, result.status, a.fold.fold_id, a.marker, a.known_pids())
        self.recorder.attempt_ended(a.fold, result, True)  # first: a failed write stops the run
        counted = a.used if result.status is not Status.CANCELLED else a.used - 1
        final = not (result.status in self.limits.retry_on and counted < self.limits.attempts
                     and self.stop_status is None)
        if not final:
            retry = Waiting(a.fold, a.number + 1, time.monotonic() + self._backoff(a.used),
                            avoid_gpu=a.slot.gpu, used=a.used)
            self.waiting.insert(self._retry_place(a.fold), retry)
        self.others.attempt_ended(a.fold, result, final)
        if self.source is not None:
            for request in self.source.ended(a.fold, result, final):
                self.source.withdrawn(request, self.withdraw(request, time.monotonic()))

    def _retry_place(self, fold: Fold) -> int:
        """Where a retry of ``fold`` waits: at the end; with a source (an adaptive search,
        whose pruner reads a replicate's folds in order), before the later folds of its
        replicate, so that they do not all end before it and leave nothing to prune."""
        if self.source is not None:
            for i, w in enumerate(self.waiting):
                if (w.fold.trial, w.fold.replicate) == (fold.trial, fold.replicate) \
                        and w.fold.fold > fold.fold:
                    return i
        return len(self.waiting)

    def _backoff(self, attempt: int) -> float:
        base = self.limits.backoff * 2.0 ** (attempt - 1)
        j = Timing.BACKOFF_JITTER
        return float(base * self.rng.uniform(1 - j, 1 + j))

    def _keep_children(self) -> set[int]:
        """Children of ours the terminator's sweep leaves alone: servers, folds, spares."""
        return self._our_children | self.launcher.pids() | set(self.running)

    # -- the end -------------------------------------------------------------------
    def _shutdown(self) -> None:
        """End whatever still runs (on an error or a stop), wait for every tree to end."""
        now = time.monotonic()
        self.launcher.retire()  # spares exit on their own; never wait for them before folds
        self._apply_stop(now)
        for a in list(self.running.values()):
            if not a.ending:
                keep = a.seen.outcome is not None
                a.end(Status.OK if keep else (self.stop_status or Status.CANCELLED),
                      "ended with the scheduler" if keep else (self.stop_reason or "the scheduler stopped"),
                      now)
        deadline = now + self.limits.grace + Timing.REAP_WAIT
        while (self.running or self.term or self.launcher.busy()) and time.monotonic() < deadline:
            self._wait(0.05)
            self._apply_stop(time.monotonic())
            self._turn(time.monotonic())
            self.launcher.poll(time.monotonic())
        for a in list(self.running.values()):  # pragma: no cover - a process that won't die
            self.term.hurry(a.pid)
            self.term.poll()
            a.wait_exit(Timing.REAP_WAIT)
            if a.pid in self.running:
                self._finish(a)
        self.launcher.close()
