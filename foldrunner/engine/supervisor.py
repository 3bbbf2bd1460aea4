"""The supervisor's side: slots, launches, results and deaths, limits, retries.

One thread runs :meth:`Supervisor.run`, a loop of named steps::

    launch what is ready -> wait for a result pipe or a death -> read what came
    -> end what died -> enforce the clocks (timeout, grace, linger, stall, memory)
    -> finish off what folds left behind

Every fold process ends in :meth:`Supervisor._finish`, reached only from the process's
exit status (its sentinel), never from silence. "What happens when a fold times out"
is :meth:`Supervisor._enforce_clocks` -> :meth:`Supervisor._begin_kill`.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, Protocol

import psutil
from multiprocess.connection import wait

from foldrunner.procs import proctree
from foldrunner.child.entry import ChildTask, read_messages
from foldrunner.errors import StorageError
from foldrunner.store.journal import Journal
from foldrunner.launch.launcher import Child, server_pids, start_child
from foldrunner.wire.outcome import AttemptResult, ChildOutcome, Status
from foldrunner.defaults import Timing
from foldrunner.store.paths import RunPaths
from foldrunner.config.plan import Fold
from foldrunner.gpu.inventory import Inventory, Slot
from foldrunner.gpu.slots import GpuSlots
from foldrunner.launch.spares import SparePool
from foldrunner.procs.terminate import Terminator
from foldrunner.gpu.watch import GpuWatch, OomCounter, tree_memory

MiB = 1024 * 1024
P = ParamSpec("P")
log = logging.getLogger("foldrunner")


@dataclass(frozen=True)
class Limits:
    """The clocks and limits the supervisor enforces, in seconds and bytes."""

    timeout: float = 1800.0
    grace: float = 10.0
    exit_timeout: float = 30.0
    stall: float | None = None
    max_rss: int | None = None
    max_gpu_memory: int | None = None
    attempts: int = 3
    retry_on: frozenset[Status] = frozenset({Status.TIMEOUT, Status.CRASHED, Status.MEMORY})
    backoff: float = 5.0


class Events(Protocol):
    """What the supervisor tells the outside world (progress, results files)."""

    def attempt_started(self, fold: Fold, attempt: int, slot: Slot) -> None: ...

    def attempt_ended(self, fold: Fold, result: AttemptResult, final: bool) -> None: ...

    def report(self, fold: Fold, attempt: int, metrics: dict[str, Any]) -> None: ...


class NoEvents:
    def attempt_started(self, fold: Fold, attempt: int, slot: Slot) -> None:
        pass

    def attempt_ended(self, fold: Fold, result: AttemptResult, final: bool) -> None:
        pass

    def report(self, fold: Fold, attempt: int, metrics: dict[str, Any]) -> None:
        pass


@dataclass
class _Pending:
    fold: Fold
    attempt: int
    not_before: float = 0.0
    avoid_gpu: int | None = None
    used: int = 0
    """Earlier attempts that count against ``retry.attempts`` (cancelled ones do not)."""


@dataclass
class _Running:
    """One attempt in flight and everything the supervisor knows of it."""

    fold: Fold
    attempt: int
    slot: Slot
    child: Child
    root: psutil.Process | None
    marker: str
    log_path: Path
    started: float  # monotonic
    started_wall: float
    deadline: float
    next_sample: float
    buf: bytearray = field(default_factory=bytearray)
    eof: bool = False
    outcome: ChildOutcome | None = None
    bad_frame: str = ""
    result_at: float | None = None
    last_report: dict[str, Any] | None = None
    last_report_at: float | None = None
    report_dirty: bool = False
    report_written: float = 0.0
    kill_status: Status | None = None
    kill_reason: str = ""
    ending: bool = False
    """Being ended through the terminator (which keeps its SIGKILL clock)."""
    hard: bool = False
    via_spare: bool = False
    started_msg: bool = False
    """The fold's process said it started its task (a spare: it has taken the fold)."""
    used: int = 1
    """Attempts of this fold that count against ``retry.attempts``, this one included."""
    lingered: bool = False
    peak_rss: int = 0
    peak_gpu: int = 0
    oom_kills_at_start: int = 0
    members: dict[int, psutil.Process] = field(default_factory=dict)

    def known_pids(self) -> set[int]:
        return {self.child.pid, *self.members}


class Supervisor:
    """Runs folds, each attempt in a fresh process, within ``slots``."""

    def __init__(
        self,
        *,
        journal: Journal,
        paths: RunPaths,
        run_id: str,
        slots: list[Slot],
        limits: Limits,
        entrypoint: str,
        entrypoint_blob: bytes | None = None,
        workdir: str = "",
        env: dict[str, str] | None = None,
        events: Events | None = None,
        start_method: str = "forkserver",
        rng: random.Random | None = None,
        deadline: float | None = None,
        inventory: Inventory | None = None,
        notes: Callable[[str], None] | None = None,
        spares: bool = False,
        preload: list[str] | None = None,
        server: Any = None,
    ) -> None:
        self.journal = journal
        self.paths = paths
        self.run_id = run_id
        self.slots = slots
        self.limits = limits
        self.entrypoint = entrypoint
        self.entrypoint_blob = entrypoint_blob
        self.workdir = workdir
        self.env = dict(env or {})
        self.events: Events = events or NoEvents()
        self.start_method = start_method
        self.server = server
        self.rng = rng or random.Random()
        self.pending: deque[_Pending] = deque()
        self.running: dict[int, _Running] = {}  # by root pid
        self.term = Terminator(self._keep_children, stray_grace=limits.grace)
        self.stop_status: Status | None = None
        self.stop_reason = ""
        self.storage_error: StorageError | None = None
        """The first journal write that failed (a full disk, a read-only run dir)."""
        self._our_children: set[int] = set()
        self._stop_pending = False
        self._stop_hard = False
        self.deadline = deadline
        self.notes = notes or (lambda text: log.warning("%s", text))
        self.gpu_watch = GpuWatch(
            inventory if any(sl.gpu is not None for sl in slots) else None, self.notes
        )
        self.oom = OomCounter()
        self.gpu_slots = GpuSlots(slots, self.gpu_watch, self.notes, limits.grace, self.term)
        self.spares = SparePool(
            enabled=spares, preload=list(preload or []), env=self.env, workdir=workdir,
            run_id=run_id, paths=paths, start_method=start_method, notes=self.notes,
            terminator=self.term, grace=limits.grace,
        )
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # -- the loop ------------------------------------------------------------------
    def run(self, work: Iterable[tuple[Fold, int, int]]) -> None:
        """Run each ``(fold, first attempt number, attempts used)`` until it ends for good.

        ``attempts used`` are the earlier attempts that count against ``retry.attempts``
        (cancelled attempts do not count).
        """
        self.pending.extend(_Pending(fold, n, used=used) for fold, n, used in work)
        self._our_children = set(proctree.child_pids())
        was_subreaper = proctree.set_subreaper(True)
        try:
            while self._work_left():
                now = time.monotonic()
                if self.deadline is not None and now >= self.deadline and self.stop_status is None:
                    self.request_stop(Status.CANCELLED, "past the run's deadline")
                self._apply_stop(now)
                self._launch_ready(now)
                self._keep_spares()
                self._wait_for_events(self._next_wakeup(now))
                self._enforce_clocks(time.monotonic())
                self.term.poll(time.monotonic())
                self.gpu_slots.check_drains(time.monotonic())
        finally:
            self._shutdown()
            if not was_subreaper:
                proctree.set_subreaper(False)
            os.close(self._wake_r)
            os.close(self._wake_w)
        if self.storage_error is not None:
            raise self.storage_error

    def _work_left(self) -> bool:
        if self.running or self.term or self.gpu_slots.draining:
            return True
        if not self.pending or self.stop_status is not None:
            return False
        if all(sl.out for sl in self.slots):
            self.request_stop(Status.CANCELLED, "every GPU was taken out of the rotation")
            return False
        return True

    def request_stop(
        self, status: Status = Status.CANCELLED, reason: str = "interrupted", hard: bool = False
    ) -> None:
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

    def _apply_stop(self, now: float) -> None:
        if not self._stop_pending:
            return
        self._stop_pending = False
        status = self.stop_status or Status.CANCELLED
        for r in list(self.running.values()):
            if not r.ending or self._stop_hard:
                # a fold whose result came keeps it (ok); the others end as ``status``
                self._begin_kill(r, Status.OK if r.outcome is not None else status,
                                 self.stop_reason, now, hard=self._stop_hard)
        self.spares.retire_all()
        self.spares.hurry(now)  # a spare holds no work: a stop never waits for its imports
        if self._stop_hard:
            self.term.hurry(None, now)  # every tree, the folds' and their leftovers

    # -- step 1: launch ----------------------------------------------------------------
    def _launch_ready(self, now: float) -> None:
        if self.stop_status is not None:
            return
        for slot in self.slots:
            if self.stop_status is not None:  # e.g. the journal could not be written
                return
            if not slot.free or not self.pending:
                continue
            item = self._take_pending(now, slot)
            if item is None:
                break
            self._launch(item, slot, now)

    def _take_pending(self, now: float, slot: Slot) -> _Pending | None:
        for i, item in enumerate(self.pending):
            if item.not_before > now:
                continue
            if item.avoid_gpu is not None and item.avoid_gpu == slot.gpu and self._other_gpu_free(slot):
                continue
            del self.pending[i]
            return item
        return None

    def _other_gpu_free(self, slot: Slot) -> bool:
        return any(s.free and s.gpu != slot.gpu for s in self.slots)

    def _launch(self, item: _Pending, slot: Slot, now: float) -> None:
        fold, attempt = item.fold, item.attempt
        log_path = self.paths.log(fold.fold_id, attempt)
        marker = f"{self.run_id}/{fold.fold_id}/{attempt}"
        task = ChildTask(
            fold_id=fold.fold_id, trial=fold.trial, replicate=fold.replicate, fold=fold.fold,
            folds=fold.folds, seed=fold.seed, attempt=attempt, params=dict(fold.params),
            gpu=slot.gpu, run_dir=str(self.paths.root), log_path=str(log_path),
            workdir=self.workdir, entrypoint=self.entrypoint,
            entrypoint_blob=self.entrypoint_blob, env=self.env, marker=marker,
            grace=self.limits.grace,
        )
        started_wall = time.time()
        spare = self.spares.take(slot)
        if spare is not None and self.spares.hand_over(spare, task):
            child, buf = spare.child, spare.buf
        else:  # no ready spare, or it died before it could take the fold
            spare = None
            child, buf = self._start_cold(task), bytearray()
        try:
            root: psutil.Process | None = psutil.Process(child.pid)
            root_started = root.create_time() if root else None
        except psutil.NoSuchProcess:
            root, root_started = None, None
        slot.busy = True
        r = _Running(
            fold=fold, attempt=attempt, slot=slot, child=child, root=root, marker=marker,
            log_path=log_path, started=now, started_wall=started_wall,
            deadline=now + self.limits.timeout, next_sample=now + Timing.FIRST_SAMPLE_DELAY,
            oom_kills_at_start=self.oom.read(), buf=buf, via_spare=spare is not None,
            used=item.used + 1,
        )
        self.running[child.pid] = r
        self._journal(
            self.journal.start_attempt, fold.fold_id, attempt, started_at=started_wall,
            pid=child.pid, pid_started_at=root_started, gpu=slot.gpu, log_path=str(log_path),
        )
        self.events.attempt_started(fold, attempt, slot)

    def _start_cold(self, task: ChildTask) -> Child:
        if self.server is None:
            return start_child(task, self.start_method)
        try:
            return start_child(task, self.start_method, self.server)
        except (OSError, EOFError) as exc:
            status = self.paths.zygote_status
            why = status.read_text() if status.exists() else f"{type(exc).__name__}: {exc}"
            self.notes(f"the zygote stopped serving ({why}); folds start from the plain fold server")
            self.server = None
            return start_child(task, self.start_method)

    def _keep_spares(self) -> None:
        if self.stop_status is None and self.pending:
            self.spares.top_up(self.slots, len(self.pending))
        elif self.spares.by_slot:
            self.spares.retire_all()
        self.spares.poll_retiring(time.monotonic())

    # -- step 2: wait ------------------------------------------------------------------
    def _next_wakeup(self, now: float) -> float:
        times = [now + 1.0]
        for r in self.running.values():
            times.append(r.next_sample)
            if not r.ending:  # else the terminator's clock wakes us (below)
                times.append(r.deadline)
            if r.result_at is not None:
                times.append(r.result_at + self.limits.exit_timeout)
            if r.report_dirty:
                times.append(r.report_written + 1.0)
            if self.limits.stall and r.last_report_at is not None:
                times.append(r.last_report_at + self.limits.stall)
        if self.term or self.spares.retiring:
            times.append(now + 0.05)
        if self.gpu_slots.draining:
            times.append(now + 0.1)
        if self.stop_status is None and any(sl.free for sl in self.slots):
            times.extend(p.not_before for p in self.pending)
        if self.deadline is not None and self.stop_status is None:
            times.append(self.deadline)
        return max(0.0, min(times) - now)

    def _wait_for_events(self, timeout: float) -> None:
        by_fd: dict[int, _Running] = {}
        by_sentinel: dict[int, _Running] = {}
        for r in self.running.values():
            if not r.eof:
                by_fd[r.child.fd] = r
            by_sentinel[r.child.sentinel] = r
        spare_fds, spare_sentinels = self.spares.fds(), self.spares.sentinels()
        ready = wait([self._wake_r, *by_fd, *by_sentinel, *spare_fds, *spare_sentinels], timeout)
        if self._wake_r in ready:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        for obj in ready:
            if obj in spare_fds:
                self.spares.on_readable(spare_fds[obj])
        for obj in ready:
            if obj in spare_sentinels and spare_sentinels[obj].slot in self.spares.by_slot:
                self.spares.on_death(spare_sentinels[obj])
        ended: list[_Running] = []
        for obj in ready:
            if obj in by_fd:
                self._read(by_fd[obj])
            if obj in by_sentinel:
                ended.append(by_sentinel[obj])
        for r in ended:
            self._finish(r)

    # -- step 3: read what came --------------------------------------------------------
    def _read(self, r: _Running) -> None:
        messages, r.eof = read_messages(r.child.fd, r.buf)
        for message in messages:
            self._on_message(r, message)

    def _on_message(self, r: _Running, message: Any) -> None:
        """One well-formed message of a fold (the wire turns anything else into "bad")."""
        now = time.monotonic()
        kind = message[0]
        if r.bad_frame:
            return  # nothing a fold says after a bad message is believed
        if kind == "started":
            r.started_msg = True
        elif kind == "result":
            r.outcome, r.result_at = message[1], now
            if r.outcome is not None and r.outcome.status is Status.OK:
                # journaled now: the fold's later fate (lingering, a kill, the
                # orchestrator's death) can neither lose this result nor run it again
                self._journal(
                    self.journal.end_attempt,
                    self._result(r, None, Status.OK, "", "", dict(r.outcome.metrics), ""))
        elif kind == "report":
            r.last_report, r.last_report_at = message[1], now
            r.report_dirty = True
            self._flush_report(r, now)
            self.events.report(r.fold, r.attempt, message[1])
        elif kind == "bad":
            r.bad_frame = str(message[1])
            if r.outcome is None and not r.ending:
                self._begin_kill(r, Status.CRASHED, f"{r.bad_frame}; its process tree was ended", now)

    def _flush_report(self, r: _Running, now: float, force: bool = False) -> None:
        if r.report_dirty and r.last_report is not None and (force or now - r.report_written >= 1.0):
            self._journal(self.journal.set_report, r.fold.fold_id, r.attempt, r.last_report,
                          time.time())
            r.report_dirty, r.report_written = False, now

    # -- step 4: end what died ---------------------------------------------------------
    def _finish(self, r: _Running) -> None:
        """The fold's root process has ended: classify, clean its tree, record, retry."""
        r.child.process.join(0)
        if r.child.process.exitcode is None:
            # spawn's sentinel is a pipe that closes while the process is still exiting:
            # its exit status follows within moments
            r.child.process.join(Timing.REAP_WAIT)
        code = r.child.process.exitcode
        self._read(r)
        self._flush_report(r, time.monotonic(), force=True)
        del self.running[r.child.pid]
        self._end_tree(r, time.monotonic())
        r.child.close()
        r.slot.busy = False
        if self._spare_fault(r, code):
            return
        status, error, tb, metrics, note = self._classify(r, code)
        result = self._result(r, code, status, error, tb, metrics, note)
        self.gpu_slots.fold_ended(r.slot, status, r.fold.fold_id, r.marker, r.known_pids())
        self._journal(self.journal.end_attempt, result)
        final = not (
            status in self.limits.retry_on
            and (r.used if status is not Status.CANCELLED else r.used - 1) < self.limits.attempts
            and self.stop_status is None
        )
        if not final:
            delay = self._backoff(r.used)
            self.pending.append(_Pending(r.fold, r.attempt + 1, time.monotonic() + delay,
                                         avoid_gpu=r.slot.gpu, used=r.used))
        self.events.attempt_ended(r.fold, result, final)

    def _journal(self, write: Callable[P, None], *args: P.args, **kwargs: P.kwargs) -> bool:
        """One journal write; whether it was written. The first that fails for the disk
        (a StorageError) stops the run like an interrupt: every fold ends through the
        normal shutdown, the journal is not written again, and :meth:`run` raises it."""
        if self.storage_error is not None:
            return False
        try:
            write(*args, **kwargs)
        except StorageError as exc:
            self.storage_error = exc
            self.request_stop(Status.CANCELLED, "stopped: cannot write the journal")
            return False
        return True

    def _result(self, r: _Running, code: int | None, status: Status, error: str, tb: str,
                metrics: dict[str, Any], note: str) -> AttemptResult:
        """The journal's record of an attempt, as far as it is known now."""
        gpu_known = r.slot.gpu is not None and self.gpu_watch.inventory is not None
        return AttemptResult(
            fold_id=r.fold.fold_id, attempt=r.attempt, status=status,
            started_at=r.started_wall, ended_at=time.time(),
            duration_s=round(time.monotonic() - r.started, 6), gpu=r.slot.gpu,
            pid=r.child.pid, exit_code=code if code is None or code >= 0 else None,
            signal=proctree.signal_name(-code) if code is not None and code < 0 else None,
            error=error, traceback=tb, metrics=metrics,
            peak_rss_mb=self._peak_mb(r), lingered=r.lingered, note=note,
            log_path=str(r.log_path),
            peak_gpu_mb=round(r.peak_gpu / MiB, 3) if gpu_known else None,
        )

    def _spare_fault(self, r: _Running, code: int | None) -> bool:
        """A spare that died after its handover, before it took its fold: not the fold's
        fault. The attempt is forgotten and the fold goes to the next free slot."""
        if not r.via_spare or r.started_msg or r.outcome is not None or r.ending:
            return False
        self._journal(self.journal.forget_attempt, r.fold.fold_id, r.attempt)
        self.spares.died_in_handover(r.slot.index, proctree.describe_exit(code))
        self.pending.appendleft(_Pending(r.fold, r.attempt, used=r.used - 1))
        return True

    def _classify(self, r: _Running, code: int | None) -> tuple[Status, str, str, dict[str, Any], str]:
        """``(status, error, traceback, metrics, note)`` of an ended attempt."""
        how = proctree.describe_exit(code)
        log = f"see {r.log_path}"
        out = r.outcome
        notes = []
        if r.lingered:
            notes.append(f"did not exit within exit_timeout {self.limits.exit_timeout:g}s "
                         "after sending its result; its process tree was killed")
        if out is not None:
            if out.status is Status.OK:
                if code not in (0, None) and not r.lingered:
                    notes.append(f"{how} after sending its result")
                return Status.OK, "", "", dict(out.metrics), "; ".join(notes)
            status = Status.MEMORY if out.memory_error else Status.ERROR
            return status, f"{out.error_type}: {out.error}", out.traceback, {}, "; ".join(notes)
        if r.kill_status is not None:
            reason = r.kill_reason
            if code == -signal.SIGKILL and not r.hard:
                reason += f"; still alive {self.limits.grace:g}s after SIGTERM, killed with SIGKILL"
            return r.kill_status, f"{reason} ({log})", "", {}, how
        if code == -signal.SIGKILL and self.oom.read() > r.oom_kills_at_start:
            return (
                Status.MEMORY,
                f"killed by SIGKILL from the kernel's OOM killer (its oom_kill count rose "
                f"while the fold ran; we sent no signal) ({log})", "", {}, "",
            )
        if r.bad_frame:
            return Status.CRASHED, f"{r.bad_frame} ({log})", "", {}, how
        return Status.CRASHED, f"{how} without sending a result ({log})", "", {}, ""

    def _backoff(self, attempt: int) -> float:
        base = self.limits.backoff * 2.0 ** (attempt - 1)
        j = Timing.BACKOFF_JITTER
        return float(base * self.rng.uniform(1 - j, 1 + j))

    @staticmethod
    def _peak_mb(r: _Running) -> float | None:
        own = r.outcome.maxrss_kb * 1024 if r.outcome is not None else 0
        peak = max(r.peak_rss, own)
        return round(peak / MiB, 3) if peak else None

    # -- step 5: the clocks ------------------------------------------------------------
    def _enforce_clocks(self, now: float) -> None:
        lim = self.limits
        for r in list(self.running.values()):
            if r.ending:
                continue  # the terminator keeps its clock
            if r.result_at is not None:
                if now >= r.result_at + lim.exit_timeout:
                    r.lingered = True
                    self._begin_kill(r, Status.OK, "lingered after its result", now)
                continue
            if now >= r.deadline:
                self._begin_kill(r, Status.TIMEOUT, f"timed out after {lim.timeout:g}s", now)
            elif lim.stall and r.last_report_at is not None and now >= r.last_report_at + lim.stall:
                self._begin_kill(
                    r, Status.TIMEOUT, f"stalled: no report for {lim.stall:g}s", now
                )
            elif now >= r.next_sample:
                self._sample(r, now)
            self._flush_report(r, now)

    def _sample(self, r: _Running, now: float) -> None:
        """Measure a fold's tree (host PSS, GPU memory); end it as ``memory`` if over."""
        r.next_sample = now + Timing.SAMPLE_INTERVAL
        if r.root is None:
            return
        procs = [r.root] + proctree.descendants(r.root.pid)
        for p in procs[1:]:
            r.members.setdefault(p.pid, p)
        used = tree_memory(procs)
        r.peak_rss = max(r.peak_rss, used)
        limit = self.limits.max_rss
        if limit is not None and used > limit and r.kill_status is None:
            self._begin_kill(
                r, Status.MEMORY,
                f"its process tree used {used / MiB:.0f} MiB, over max_rss {limit / MiB:.0f} MiB",
                now, hard=True,
            )
            return
        if r.slot.gpu is None or not self.gpu_watch.refresh(now):
            return
        gpu_used, _ = self.gpu_watch.fold_usage(r.slot.gpu, r.marker, r.known_pids())
        r.peak_gpu = max(r.peak_gpu, gpu_used)
        glimit = self.limits.max_gpu_memory
        if glimit is not None and gpu_used > glimit and r.kill_status is None:
            self._begin_kill(
                r, Status.MEMORY,
                f"its processes held {gpu_used / MiB:.0f} MiB on GPU {r.slot.gpu}, "
                f"over max_gpu_memory {glimit / MiB:.0f} MiB",
                now, hard=True,
            )

    def _tree(self, r: _Running) -> list[psutil.Process]:
        procs = [] if r.root is None else [r.root]
        if r.root is not None:
            for p in proctree.descendants(r.root.pid):
                r.members.setdefault(p.pid, p)
        procs += list(r.members.values())
        return procs

    def _begin_kill(self, r: _Running, status: Status, reason: str, now: float, hard: bool = False) -> None:
        """End a running fold through the one termination path: SIGTERM to its group and
        every member, SIGKILL after ``grace`` (at once when ``hard``)."""
        if status is not Status.OK and r.kill_status is None:
            r.kill_status, r.kill_reason = status, reason
        r.hard = r.hard or hard
        r.ending = True
        self._end(r, self._tree(r), now)

    def _end_tree(self, r: _Running, now: float) -> None:
        """The fold's root has ended: whatever it left (its group, members, processes
        that come back to us with its marker, group or session) is ended too, within the
        same grace when it was being ended, else with a grace of its own."""
        self._end(r, list(r.members.values()), now)

    def _end(self, r: _Running, procs: list[psutil.Process], now: float) -> None:
        """Hand a fold's tree to the terminator (joining its ending if one runs)."""
        self.term.end(r.child.pid, procs=procs, pgids=[r.child.pid], marker=r.marker,
                      grace=0.0 if r.hard else self.limits.grace, now=now,
                      label=f"fold {r.fold.fold_id} attempt {r.attempt}")

    def _keep_children(self) -> set[int]:
        """Children of ours that the sweep leaves alone: servers, folds' roots, spares."""
        return (self._our_children | server_pids() | set(self.running)
                | self.spares.pids())


    # -- the end -------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Kill whatever still runs (on an error or stop), wait for every tree to end."""
        self.spares.retire_all()  # they exit on their own; never wait for them before folds
        now = time.monotonic()
        self._apply_stop(now)
        for r in list(self.running.values()):
            if not r.ending and r.outcome is None:
                reason = self.stop_reason or "the supervisor stopped"
                self._begin_kill(r, self.stop_status or Status.CANCELLED, reason, now)
            elif not r.ending:
                self._begin_kill(r, Status.OK, "ended with the supervisor", now)
        deadline = now + self.limits.grace + Timing.REAP_WAIT
        while (self.running or self.term or self.spares.retiring) and time.monotonic() < deadline:
            self._wait_for_events(0.05)
            self._apply_stop(time.monotonic())
            self._enforce_clocks(time.monotonic())
            self.term.poll(time.monotonic())
            self.spares.poll_retiring(time.monotonic())
        for r in list(self.running.values()):  # pragma: no cover - a process that won't die
            self.term.hurry(r.child.pid)
            self.term.poll()
            r.child.process.join(Timing.REAP_WAIT)
            if r.child.pid in self.running:
                self._finish(r)
        self.spares.close_all()

