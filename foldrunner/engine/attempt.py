"""One attempt of one fold, its whole life: launch, watch, end, outcome.

An :class:`Attempt` starts its process through a launcher, reads what the fold sends,
keeps the fold's clocks (timeout, stall, lingering after the result) and its memory
limits, ends its process tree through the one termination path, and says what became
of it (:meth:`Attempt.finish`). It knows nothing of the scheduler: no queue, no other
fold, no retry. The scheduler owns the wait; an attempt gives it its pipe and sentinel.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil

from foldrunner.child.task import ChildTask
from foldrunner.config.plan import Fold
from foldrunner.defaults import Timing
from foldrunner.engine.events import AttemptStart, Events
from foldrunner.engine.limits import Limits
from foldrunner.engine.verdict import Observed, classify
from foldrunner.gpu.inventory import Slot
from foldrunner.gpu.watch import GpuWatch
from foldrunner.launch.local import Launched
from foldrunner.procs import proctree
from foldrunner.procs.memory import OomCounter, tree_memory
from foldrunner.procs.terminate import Terminator
from foldrunner.wire.framing import read_messages
from foldrunner.wire.messages import Bad, Message, Report, Result, Started
from foldrunner.wire.outcome import AttemptResult, Status

MiB = 1024 * 1024


class Launcher(Protocol):
    """Where an attempt's process comes from (:class:`~foldrunner.launch.local.LocalLauncher`)."""

    def start(self, task: ChildTask, slot: Slot) -> Launched: ...


@dataclass(frozen=True)
class TaskTemplate:
    """What every attempt of a run hands its process besides its fold: the entry point,
    the working directory, the environment, the run dir."""

    run_id: str
    run_dir: str
    entrypoint: str
    entrypoint_blob: bytes | None
    workdir: str
    env: dict[str, str]
    grace: float

    def marker(self, fold: Fold, attempt: int) -> str:
        """The mark every process of this attempt carries in its environment."""
        return f"{self.run_id}/{fold.fold_id}/{attempt}"

    def task(self, fold: Fold, attempt: int, slot: Slot, log_path: Path) -> ChildTask:
        return ChildTask(
            fold_id=fold.fold_id, trial=fold.trial, replicate=fold.replicate, fold=fold.fold,
            folds=fold.folds, seed=fold.seed, attempt=attempt, params=dict(fold.params),
            gpu=slot.gpu, run_dir=self.run_dir, log_path=str(log_path), workdir=self.workdir,
            entrypoint=self.entrypoint, entrypoint_blob=self.entrypoint_blob, env=self.env,
            marker=self.marker(fold, attempt), grace=self.grace,
        )


@dataclass
class Watchers:
    """What an attempt shares with the others of its run: the terminator, the GPU
    memory watch, the kernel's OOM kill counter, the events' subscribers."""

    term: Terminator
    gpu: GpuWatch
    oom: OomCounter
    events: Events


@dataclass(frozen=True)
class Finished:
    """How an attempt ended: its result, or withdrawn (it never ran its fold)."""

    result: AttemptResult | None
    withdrawn: str = ""
    """Why it was withdrawn: a warm spare died in its handover (the fold's result is None)."""


class Attempt:
    """One attempt of ``fold`` on ``slot``: its process, its clocks, its outcome."""

    def __init__(self, fold: Fold, number: int, used: int, slot: Slot, limits: Limits,
                 watchers: Watchers, log_path: Path, marker: str) -> None:
        self.fold, self.number, self.slot, self.limits = fold, number, slot, limits
        self.used = used
        """Attempts of this fold that count against ``retry.attempts``, this one included."""
        self.w = watchers
        self.log_path, self.marker = log_path, marker
        self.seen = Observed()
        self.result_at: float | None = None
        self.last_report_at: float | None = None
        self.ending = False
        """Being ended through the terminator (which keeps its SIGKILL clock)."""
        self.bad_frame = ""
        self.started_msg = False
        """The process said it started its task (a spare: it has taken the fold)."""
        self.members: dict[int, psutil.Process] = {}
        self.root: psutil.Process | None = None
        self.eof = False

    # -- launch --------------------------------------------------------------------
    def launch(self, launcher: Launcher, task: ChildTask, now: float) -> None:
        self.started_wall = time.time()
        launched = launcher.start(task, self.slot)
        self.child, self.buf, self.via_spare = launched.child, launched.buf, launched.via_spare
        self.host = launched.host
        self.started, self.deadline = now, now + self.limits.timeout
        self.next_sample = now + Timing.FIRST_SAMPLE_DELAY
        self.oom_kills_at_start = self.w.oom.read()
        root_started: float | None = None
        try:
            self.root = psutil.Process(self.child.pid)
            root_started = self.root.create_time()
        except psutil.NoSuchProcess:
            self.root = None
        self.slot.busy = True
        self._start = AttemptStart(
            fold=self.fold, attempt=self.number, slot=self.slot, pid=self.child.pid,
            pid_started_at=root_started, started_at=self.started_wall, log_path=str(self.log_path),
            host=self.host,
        )

    def announce(self) -> None:
        """Tell the events the attempt started (the journal records it as running). Its
        owner calls this once it holds the attempt, so that whatever a subscriber raises,
        the attempt is already among those a shutdown ends."""
        self.w.events.attempt_started(self._start)

    @property
    def pid(self) -> int:
        """The root process's pid: the attempt's key while it runs."""
        return int(self.child.pid)

    @property
    def fd(self) -> int | None:
        """The result pipe to wait on; None once it is at its end."""
        return None if self.eof else int(self.child.fd)

    @property
    def sentinel(self) -> int:
        """Ready when the root process has exited."""
        return int(self.child.sentinel)

    def wait_exit(self, timeout: float) -> None:
        """Wait (bounded) for the root process to have exited."""
        self.child.process.join(timeout)

    def known_pids(self) -> set[int]:
        return {self.child.pid, *self.members}

    # -- what the fold says --------------------------------------------------------
    def read(self) -> None:
        messages, self.eof = read_messages(self.child.fd, self.buf)
        for message in messages:
            self._on_message(message)

    def _on_message(self, message: Message) -> None:
        """One well-formed message of a fold (the wire turns anything else into ``Bad``)."""
        now = time.monotonic()
        if self.bad_frame:
            return  # nothing a fold says after a bad message is believed
        match message:
            case Started():
                self.started_msg = True  # a spare has taken its fold: its death is the fold's now
            case Result(outcome=outcome):
                self.seen.outcome, self.result_at = outcome, now
                if outcome.status is Status.OK:
                    # recorded now: the fold's later fate (lingering, a kill, the
                    # orchestrator's death) can neither lose this result nor run it again
                    self.w.events.result_arrived(self.fold, self._result(
                        None, Status.OK, "", "", dict(outcome.metrics), ""))
            case Report(values=values):
                self.last_report_at = now  # the fold's own clock is not trusted
                self.w.events.report(self.fold, self.number, values, time.time())
            case Bad(reason=reason):
                self.bad_frame = self.seen.bad_frame = reason
                if self.seen.outcome is None and not self.ending:
                    self.end(Status.CRASHED, f"{reason}; its process tree was ended", now)
            case _:
                pass  # Ready, PreloadError: a spare's, read by the spare pool before its fold

    # -- the clocks ----------------------------------------------------------------
    def next_wakeup(self) -> float:
        """When :meth:`enforce` next has something to do (it mirrors it)."""
        if self.ending:
            return math.inf  # the terminator's clock wakes the loop
        if self.result_at is not None:
            return self.result_at + self.limits.exit_timeout
        times = [self.next_sample, self.deadline]
        if self.limits.stall and self.last_report_at is not None:
            times.append(self.last_report_at + self.limits.stall)
        return min(times)

    def enforce(self, now: float) -> None:
        """Timeout, stall, lingering after the result, memory: end the fold when over."""
        lim = self.limits
        if self.ending:
            return  # the terminator keeps its clock
        if self.result_at is not None:
            if now >= self.result_at + lim.exit_timeout:
                self.seen.lingered = True
                self.end(Status.OK, "lingered after its result", now)
            return
        if now >= self.deadline:
            self.end(Status.TIMEOUT, f"timed out after {lim.timeout:g}s", now)
        elif lim.stall and self.last_report_at is not None and now >= self.last_report_at + lim.stall:
            self.end(Status.TIMEOUT, f"stalled: no report for {lim.stall:g}s", now)
        elif now >= self.next_sample:
            self._sample(now)

    def _sample(self, now: float) -> None:
        """Measure the fold's tree (host PSS, GPU memory); end it as ``memory`` if over."""
        self.next_sample = now + Timing.SAMPLE_INTERVAL
        if self.root is None:
            return
        used = tree_memory(self._tree())
        self.seen.peak_rss = max(self.seen.peak_rss, used)
        limit = self.limits.max_rss
        if limit is not None and used > limit and self.seen.kill_status is None:
            self.end(Status.MEMORY, f"its process tree used {used / MiB:.0f} MiB, over max_rss "
                     f"{limit / MiB:.0f} MiB", now, hard=True)
            return
        if self.slot.gpu is None or not self.w.gpu.refresh(now):
            return
        gpu_used, _ = self.w.gpu.fold_usage(self.slot.gpu, self.marker, self.known_pids())
        self.seen.peak_gpu = max(self.seen.peak_gpu, gpu_used)
        glimit = self.limits.max_gpu_memory
        if glimit is not None and gpu_used > glimit and self.seen.kill_status is None:
            self.end(Status.MEMORY, f"its processes held {gpu_used / MiB:.0f} MiB on GPU "
                     f"{self.slot.gpu}, over max_gpu_memory {glimit / MiB:.0f} MiB", now, hard=True)

    # -- the end -------------------------------------------------------------------
    def _tree(self) -> list[psutil.Process]:
        """The root and every live process known to be the fold's (members are remembered:
        a process that left the tree by ``setsid`` or a double fork stays the fold's).
        A member that ended is forgotten: its pid may be another process's by now
        (``is_running`` compares start times)."""
        for pid, p in list(self.members.items()):
            if not p.is_running():
                del self.members[pid]
        if self.root is None:
            return list(self.members.values())
        for p in proctree.descendants(self.root.pid):
            if p.pid not in self.members:
                self.members[p.pid] = p
        return [self.root, *self.members.values()]

    def end(self, status: Status, reason: str, now: float, hard: bool = False) -> None:
        """End the fold's tree through the one termination path: SIGTERM to its group and
        every member, SIGKILL after ``grace`` (at once when ``hard``). ``status`` is what
        it ends as, unless its result came (then it stays ``ok``)."""
        if status is not Status.OK and self.seen.kill_status is None:
            self.seen.kill_status, self.seen.kill_reason = status, reason
        self.seen.hard = self.seen.hard or hard
        self.ending = True
        self._hand_to_terminator(self._tree(), now)

    def _hand_to_terminator(self, procs: list[psutil.Process], now: float) -> None:
        self.w.term.end(self.child.pid, procs=procs, pgids=[self.child.pid], marker=self.marker,
                        grace=0.0 if self.seen.hard else self.limits.grace, now=now,
                        label=f"fold {self.fold.fold_id} attempt {self.number}")

    def finish(self) -> Finished:
        """The process has exited (its sentinel fired): read what is left, end what it left
        behind (its group, members, processes with its marker), say how it ended."""
        self.child.process.join(0)
        if self.child.process.exitcode is None:
            # spawn's sentinel is a pipe that closes while the process is still exiting:
            # its exit status follows within moments
            self.child.process.join(Timing.REAP_WAIT)
        code = self.child.process.exitcode
        self.read()
        self._hand_to_terminator(list(self.members.values()), time.monotonic())
        self.child.close()
        self.slot.busy = False
        if self.via_spare and not self.started_msg and self.seen.outcome is None and not self.ending:
            return Finished(None, withdrawn=proctree.describe_exit(code))
        status, error, tb, metrics, note = classify(self.seen, code, self.limits, self.log_path,
                                                    self._oom_killed(code))
        return Finished(self._result(code, status, error, tb, metrics, note))

    def _oom_killed(self, code: int | None) -> bool:
        return code == -signal.SIGKILL and self.w.oom.read() > self.oom_kills_at_start

    def _result(self, code: int | None, status: Status, error: str, tb: str,
                metrics: dict[str, Any], note: str) -> AttemptResult:
        """The journal's record of this attempt, as far as it is known now."""
        gpu_known = self.slot.gpu is not None and self.w.gpu.inventory is not None
        return AttemptResult(
            fold_id=self.fold.fold_id, attempt=self.number, status=status,
            started_at=self.started_wall, ended_at=time.time(),
            duration_s=round(time.monotonic() - self.started, 6), gpu=self.slot.gpu,
            pid=self.child.pid, exit_code=code if code is None or code >= 0 else None,
            signal=proctree.signal_name(-code) if code is not None and code < 0 else None,
            error=error, traceback=tb, metrics=metrics,
            peak_rss_mb=self.seen.peak_rss_mb(), lingered=self.seen.lingered, note=note,
            log_path=str(self.log_path),
            peak_gpu_mb=round(self.seen.peak_gpu / MiB, 3) if gpu_known else None,
        )

