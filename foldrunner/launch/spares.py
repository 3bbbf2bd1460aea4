"""Warm spares: one child per slot, started ahead, that has imported the spec's
``preload`` modules (e.g. TensorFlow) and waits for its one fold.

A spare is started by the same fold server (or spawn) as any fold, with its slot's
``CUDA_VISIBLE_DEVICES`` set before it imports anything; it is never made by forking a
process that has imported TensorFlow. It serves exactly one fold and is never reused.
Spares not needed at the end are ended cleanly: their task pipe is closed and they exit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from foldrunner.child.task import ChildTask, SpareInit
from foldrunner.gpu.inventory import Slot
from foldrunner.launch.launcher import Child, start_spare
from foldrunner.procs import proctree
from foldrunner.procs.terminate import Terminator
from foldrunner.store.paths import RunPaths
from foldrunner.wire.framing import encode_frame, read_messages, write_all
from foldrunner.wire.messages import PreloadError, Ready

SPARE_DEATHS_TO_GIVE_UP = 3
"""After this many spares in a row die before their fold comes, spares are switched off."""
SPARE_EXIT_WAIT = 2.0
"""Seconds an unneeded spare gets to exit after its task pipe is closed, before SIGKILL."""


@dataclass
class Spare:
    slot: int
    gpu: int | None
    child: Child
    task_fd: int
    marker: str
    log_path: Path
    started: float
    ready_at: float | None = None
    buf: bytearray = field(default_factory=bytearray)
    eof: bool = False


class SparePool:
    """The spares of one run, at most one per slot."""

    def __init__(
        self,
        *,
        enabled: bool,
        preload: list[str],
        env: dict[str, str],
        workdir: str,
        run_id: str,
        paths: RunPaths,
        start_method: str,
        notes: Callable[[str], None],
        terminator: Terminator,
        grace: float = 10.0,
    ) -> None:
        self.enabled = enabled
        self.preload, self.env, self.workdir = preload, env, workdir
        self.run_id, self.paths, self.start_method = run_id, paths, start_method
        self.notes = notes
        self.term, self.grace = terminator, grace
        self.by_slot: dict[int, Spare] = {}
        self.started = 0
        self.deaths_in_a_row = 0
        self.preload_errors: set[str] = set()
        self.retiring: list[tuple[Spare, float]] = []

    # -- making and keeping ------------------------------------------------------------
    def top_up(self, slots: list[Slot], pending: int) -> None:
        """Give a spare to each slot that lacks one, while folds are waiting for them."""
        if not self.enabled:
            return
        for slot in slots:
            if len(self.by_slot) >= pending:
                return
            if slot.out or slot.index in self.by_slot:
                continue
            self.by_slot[slot.index] = self._start(slot)

    def _start(self, slot: Slot) -> Spare:
        self.started += 1
        n = self.started
        marker = f"{self.run_id}/spare/{slot.index}/{n}"
        log_dir = self.paths.logs / "spares"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"slot{slot.index}.{n}.log"
        init = SpareInit(gpu=slot.gpu, env=self.env, workdir=self.workdir,
                         preload=list(self.preload), log_path=str(log_path), marker=marker,
                         grace=self.grace)
        child, task_fd = start_spare(init, f"foldrunner spare {slot.index}.{n}", self.start_method)
        return Spare(slot.index, slot.gpu, child, task_fd, marker, log_path, time.monotonic())

    # -- events --------------------------------------------------------------------
    def fds(self) -> dict[int, Spare]:
        return {s.child.fd: s for s in self.by_slot.values() if not s.eof}

    def sentinels(self) -> dict[int, Spare]:
        return {s.child.sentinel: s for s in self.by_slot.values()}

    def pids(self) -> set[int]:
        """The pids of every spare still held (waiting or retiring)."""
        return {s.child.pid for s in self.by_slot.values()} | {s.child.pid for s, _ in self.retiring}

    def on_readable(self, spare: Spare) -> None:
        """What a waiting spare said: that it is ready, or which preload it could not import
        (anything else a spare says before its fold is ignored: it is not a fold's yet)."""
        messages, spare.eof = read_messages(spare.child.fd, spare.buf)
        for m in messages:
            if isinstance(m, Ready):
                spare.ready_at = time.monotonic()
                self.deaths_in_a_row = 0
            elif isinstance(m, PreloadError) and m.module not in self.preload_errors:
                self.preload_errors.add(m.module)
                self.notes(f"preload: cannot import {m.module!r} in a spare: {m.error} "
                           f"(see {spare.log_path}); folds import what they need themselves")

    def on_death(self, spare: Spare) -> None:
        """A spare died before its fold came: note it; it is replaced on the next top-up."""
        self.by_slot.pop(spare.slot, None)
        spare.child.process.join(SPARE_EXIT_WAIT)
        code = spare.child.process.exitcode
        how = proctree.describe_exit(code)
        self._end(spare, 0.0)  # anything it started
        self._close(spare)
        self._count_death(spare, how)

    def died_in_handover(self, slot: int, how: str) -> None:
        """The spare of ``slot`` died after its fold was sent, before it took it."""
        self.deaths_in_a_row += 1
        self.notes(f"a warm spare of slot {slot} {how} while its fold was handed over; "
                   "the fold goes to the next free slot")

    def _count_death(self, spare: Spare, how: str) -> None:
        self.deaths_in_a_row += 1
        if self.deaths_in_a_row >= SPARE_DEATHS_TO_GIVE_UP and self.enabled:
            self.enabled = False
            self.notes(f"warm spares switched off: {self.deaths_in_a_row} spares in a row died "
                       f"before their fold came (last {how}; see {spare.log_path})")
        else:
            self.notes(f"a warm spare of slot {spare.slot} {how} before its fold came "
                       f"(see {spare.log_path}); starting another")

    # -- handing over ------------------------------------------------------------------
    def take(self, slot: Slot) -> Spare | None:
        """The slot's spare if it is ready; else None (the fold starts cold, the spare
        keeps warming for the next one). A fold is never handed to a spare that could
        still die in its preloads."""
        spare = self.by_slot.get(slot.index)
        if spare is None or spare.ready_at is None:
            return None
        del self.by_slot[slot.index]
        return spare

    def hand_over(self, spare: Spare, task: ChildTask) -> bool:
        """Send the spare its one fold; its task pipe is closed behind it.

        False when the spare died before it could be sent (the fold must start
        elsewhere; the dead spare is ended and counted).
        """
        try:
            write_all(spare.task_fd, encode_frame(task))
            return True
        except OSError as exc:  # BrokenPipeError: it died after its last poll
            self._end(spare, 0.0)
            spare.child.process.join(SPARE_EXIT_WAIT)
            self._count_death(spare, f"died ({type(exc).__name__})")
            self._close(spare)
            return False
        finally:
            if spare.task_fd >= 0:
                os.close(spare.task_fd)
                spare.task_fd = -1

    # -- the end ---------------------------------------------------------------------
    def retire_all(self) -> None:
        """Unused spares exit: their task pipes are closed (SIGKILL if they linger)."""
        now = time.monotonic()
        for s in self.by_slot.values():
            if s.task_fd >= 0:
                os.close(s.task_fd)
                s.task_fd = -1
            self._end(s, SPARE_EXIT_WAIT)  # it holds no work: SIGTERM now is fine
            self.retiring.append((s, now + SPARE_EXIT_WAIT))
        self.by_slot.clear()

    def hurry(self, now: float) -> None:
        """SIGKILL retiring spares at the next poll (a stop never waits for their imports)."""
        for s, _ in self.retiring:
            self.term.hurry(("spare", s.child.pid), now)

    def poll_retiring(self, now: float) -> None:
        for item in list(self.retiring):
            s, _ = item
            s.child.process.join(0)
            if s.child.process.exitcode is not None and ("spare", s.child.pid) not in self.term:
                self._close(s)
                self.retiring.remove(item)

    def _end(self, s: Spare, grace: float) -> None:
        """End a spare's tree through the one termination path."""
        try:
            procs = [psutil.Process(s.child.pid)]
        except psutil.NoSuchProcess:
            procs = []
        self.term.end(("spare", s.child.pid), procs=procs, pgids=[s.child.pid], marker=s.marker,
                      grace=grace, label=f"spare {s.slot} ({s.marker})")

    def close_all(self) -> None:
        """Retire every spare and wait (bounded) until they are gone."""
        self.retire_all()
        deadline = time.monotonic() + SPARE_EXIT_WAIT + 2.0
        while self.retiring and time.monotonic() < deadline:
            self.term.poll()
            self.poll_retiring(time.monotonic())
            if self.retiring:
                time.sleep(0.02)

    @staticmethod
    def _close(s: Spare) -> None:
        if s.task_fd >= 0:
            os.close(s.task_fd)
            s.task_fd = -1
        s.child.close()
