"""What runs on each node of the cluster: the run's node helper (a Ray actor) and the
Ray task of one attempt.

The task holds the attempt's resources (its share of a GPU, its CPUs): Ray picks its node
and its GPU. It hands the attempt to its node's helper, which starts a fresh process for
the fold from the node's fold server and supervises it with the same
:class:`~foldrunner.engine.attempt.Attempt` as the local backend (timeout with tree kill,
memory limits, lingering kill, log capture). Everything the attempt says goes back to
the driver as it happens (batched: what comes within :data:`HOLD` travels together),
through the task (a generator): its start, reports, an ``ok`` result on arrival, the log
as it grows, and at last how it ended.

A fold's result frees its slot on the driver while its process still exits (TensorFlow's
teardown takes tens of milliseconds): the slot's next attempt is sent at once, and its task
waits on its node until that process is gone (:meth:`NodeHelper.take_turn`; the thread
that sees it gone starts the next fold at once), so the next fold starts when the local
backend's would, not a round trip to the driver later. Ray's
accounting is untouched: each task holds what it asked for until its own fold is gone.

The task reaches its helper on the helper's local socket, and hears back there, not
through Ray: a task that waits in a Ray call (``ray.get``, a generator's next item) lends
its CPUs back to Ray meanwhile, and Ray would start other tasks on them while the fold
runs. The task never waits on Ray, so it keeps what it asked for until its fold, and what
the fold left, are gone.

Helpers are created by the driver, one per node, and belong to it: if the driver dies,
Ray ends them, and every fold they started sees its lifeline close and ends its tree.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
from multiprocess.connection import Connection, wait

from foldrunner.child.task import ChildTask
from foldrunner.config.plan import Fold
from foldrunner.defaults import Timing
from foldrunner.engine.attempt import Attempt, Watchers
from foldrunner.engine.events import AttemptStart, Events
from foldrunner.engine.limits import Limits
from foldrunner.gpu.inventory import NvmlInventory, Slot
from foldrunner.gpu.watch import GpuWatch
from foldrunner.launch.forkserver import FOLD_SERVER
from foldrunner.launch.local import LocalLauncher
from foldrunner.procs.memory import OomCounter
from foldrunner.procs.terminate import Terminator
from foldrunner.remote.threads import Threads
from foldrunner.store.paths import RunPaths
from foldrunner.wire.outcome import AttemptResult, Status

LOG_CHUNK_INTERVAL = 1.0
"""Seconds between two chunks of a running fold's log sent to the driver."""
LOG_CHUNK_MAX = 1 << 20
"""At most this many bytes of log in one message (the rest follows)."""
HELPER_WAIT = 30.0
"""Seconds a task waits for its node's helper to exist (the driver creates helpers as
nodes join)."""
HOLD = 0.05
"""Seconds what an attempt says may wait to travel with what it says next: a short fold's
start, result, log and end go to the driver as one item of its task's generator, not four
(each item is a Ray call from the node to the driver)."""
RESULT_HOLD = 0.01
"""Seconds a fold's result waits for its process's end to travel with it. A process that
takes longer to exit (TensorFlow's teardown takes tens of milliseconds) lets its result go
ahead: the driver then hands the slot to its next attempt, whose task waits on this node
for the process to be gone (see :meth:`NodeHelper.take_turn`) instead of being sent only
once the driver hears of that end."""
TURN_POLL = 0.05
"""Seconds between two looks, while an attempt waits for its turn, at whether it was
ended or its task went away."""


def helper_name(run_token: str, node_id: str) -> str:
    return f"foldrunner-{run_token}-{node_id}"


def helper_address(run_token: str, node_id: str) -> str:
    """Where the run's helper on a node listens for its attempts' tasks: a local socket in
    the abstract namespace (no file to leave behind), taken only from this user."""
    return f"\0{helper_name(run_token, node_id)}"


@dataclass(frozen=True)
class NodeSettings:
    """What every helper of a run needs: the run's identity and the folds' environment."""

    run_id: str
    run_token: str
    namespace: str
    env: dict[str, str]
    workdir: str
    """The driver's workdir; a node uses its copy from Ray's runtime environment (its
    current directory) when the driver's path does not exist there."""
    grace: float
    start_method: str = "forkserver"
    spares: bool = False
    """Keep a warm spare per slot of the node (``resources.spares``)."""
    preload: tuple[str, ...] = ()
    per_gpu: int = 1
    cpus_per_fold: float = 1.0
    gpus: bool = False
    """Folds ask Ray for a share of a GPU (``gpus: auto`` on a cluster with GPUs): slots,
    and their spares, are per GPU; else per CPU, whatever GPUs the node has."""
    workers: int = 1
    """Folds in flight across the cluster: no node keeps more spares than this."""


@dataclass(frozen=True)
class AttemptOrder:
    """One attempt, as the driver sends it to a node."""

    fold: Fold
    number: int
    used: int
    marker: str
    task: ChildTask
    limits: Limits
    after: str | None = None
    """The attempt that handed this one its slot on its result, while its process was still
    exiting: this one starts once that process is gone."""
    after_node: str | None = None
    """The node of ``after``: there, its helper sees the process end; elsewhere the
    driver says when (:meth:`NodeHelper.go`)."""


@dataclass
class _Collector(Events):
    """The remote attempt's events, as plain messages for the driver."""

    host: str
    node: str
    out: list[tuple[Any, ...]] = field(default_factory=list)

    def attempt_started(self, start: AttemptStart) -> None:
        self.out.append(("started", start.pid, start.pid_started_at, start.started_at,
                         start.slot.gpu, self.host, self.node))

    def report(self, fold: Fold, attempt: int, metrics: dict[str, Any], at: float) -> None:
        self.out.append(("report", metrics, at))

    def result_arrived(self, fold: Fold, result: AttemptResult) -> None:
        self.out.append(("result", result))


class NodeHelper:
    """The run's helper on one node: its fold server and the attempts running there."""

    def __init__(self, settings: NodeSettings) -> None:
        self.s = settings
        self.host = socket.gethostname()
        self.node = ray.get_runtime_context().get_node_id()
        self.root = Path(tempfile.gettempdir()) / "foldrunner-ray" / settings.run_token
        self.paths = RunPaths(self.root)
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.workdir = settings.workdir if Path(settings.workdir).is_dir() else os.getcwd()
        self.launch_lock = threading.Lock()
        """Held for every use of the launcher (its spares are shared by the attempts'
        threads and the thread that keeps them warm)."""
        self.launcher = LocalLauncher(
            run_id=settings.run_id, paths=self.paths, terminator=Terminator(strays=False),
            grace=settings.grace, notes=lambda text: None, env=dict(settings.env),
            workdir=self.workdir, start_method=settings.start_method, spares=settings.spares,
            preload=settings.preload,
        )
        self.slots = _node_slots(self.node, settings)
        if settings.start_method == "forkserver" and self.slots:
            FOLD_SERVER.ensure_running()  # now, not on this node's first attempt
        self.ends: dict[str, tuple[Status, str, bool]] = {}
        self.alive: set[str] = set()
        """The attempts whose fold process runs here."""
        self.next_up: dict[str, _Turn] = {}
        """The launch of the attempt waiting for each one's slot (by the marker it waits for);
        an entry taken out (under ``turn_lock``) belongs to whoever took it."""
        self.turn_lock = threading.Lock()
        self.turns: dict[str, threading.Event] = {}
        """Attempts waiting here for one on another node to end, each with an event the
        driver sets (:meth:`go`) when it has."""
        self._nvml: NvmlInventory | None = None
        self._cleaning = threading.Condition()
        self._cleanups = 0
        """Attempts whose end was told and whose leftovers are still being ended."""
        self._closing = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        """Written when a spare is taken: the spares' thread starts its successor at once."""
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        if settings.spares:
            threading.Thread(target=self._keep_warm, daemon=True, name="foldrunner spares").start()
        self.threads = Threads("foldrunner attempt")
        """Where each attempt's task is served (a thread per attempt running here)."""
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(helper_address(settings.run_token, self.node))
        self.listener.listen(64)
        threading.Thread(target=self._accept, daemon=True, name="foldrunner tasks").start()

    def ready(self) -> bool:
        """Answers once the helper exists and listens (the driver waits on it)."""
        return True

    def _accept(self) -> None:
        """Take each attempt's task as it connects: a thread of its own serves it."""
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:  # close() closed the listener
                return
            if not _same_user(sock):
                sock.close()
                continue
            self.threads.run(functools.partial(self.serve, Connection(sock.detach())))

    def _keep_warm(self) -> None:
        """One warm spare per slot of this node, all the run long (the local backend's
        spares: a fresh process per fold, its preloads already imported)."""
        while not self._closing.is_set():
            with self.launch_lock:
                if self._closing.is_set():  # close() retired the spares meanwhile: no new ones
                    return
                self.launcher.keep_warm(self.slots, len(self.slots), time.monotonic())
                objs = self.launcher.waitables()
            try:
                ready = set(wait([self._wake_r, *objs], 0.2))
            except (OSError, ValueError):  # a spare taken meanwhile: its pipe went with it
                continue
            if self._wake_r in ready:
                ready.discard(self._wake_r)
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            with self.launch_lock:
                self.launcher.on_ready(ready)

    def _slot(self, gpu: int | None) -> Slot:
        """A slot of this node for a fold on ``gpu``: one whose spare is ready if any."""
        fits = [sl for sl in self.slots if sl.gpu == gpu] or [Slot(len(self.slots), gpu=gpu)]
        warm = self.launcher.spares.by_slot
        ready = [sl for sl in fits if sl.index in warm and warm[sl.index].ready_at is not None]
        return (ready or fits)[0]

    def _inventory(self) -> NvmlInventory:
        """This node's NVML inventory (made once: NVML's start is not free)."""
        if self._nvml is None:
            self._nvml = NvmlInventory()
        return self._nvml

    def end(self, marker: str, status: str, reason: str, hard: bool) -> None:
        """End the attempt ``marker`` (a stop, the driver's clock): as ``Attempt.end``, the
        first status asked for stands, a later ``hard`` hurries it."""
        old = self.ends.get(marker)
        self.ends[marker] = ((old[0], old[1], old[2] or hard) if old
                             else (Status(status), reason, hard))

    def serve(self, conn: Connection) -> None:
        """Run the attempt a task sent on ``conn``, on the GPU Ray gave the task: send the
        task what the attempt says, then how it ended; close once what the fold left is
        gone. A task gone meanwhile (cancelled, its worker killed) ends the fold at once:
        nobody is left to hear of it."""
        told = True
        order: AttemptOrder | None = None
        try:
            try:
                order, gpu = conn.recv()
            except (EOFError, OSError):  # the task is gone before its fold started
                return
            try:
                for batch in self.run(order, gpu, conn):
                    if not told:
                        continue
                    try:
                        conn.send(batch)
                    except OSError:
                        told = False
                        self.end(order.marker, Status.CANCELLED.value, "its Ray task is gone", True)
            except Exception as exc:  # noqa: BLE001 - told to the task, whose failure it becomes
                if told:
                    try:
                        conn.send([("fault", f"{type(exc).__name__}: {exc}")])
                    except OSError:
                        pass
        finally:
            conn.close()
            if order is not None:  # an end asked for after it ended, or before it started
                self.ends.pop(order.marker, None)

    def go(self, marker: str) -> None:
        """The attempt that handed ``marker`` its slot, on another node, has ended (told
        once ``marker`` said it waits here)."""
        turn = self.turns.get(marker)
        if turn is not None:
            turn.set()

    def take_turn(self, order: AttemptOrder, conn: Connection,
                  launch: Callable[[], Attempt]) -> Attempt | AttemptResult | None:
        """Wait while the attempt that handed ``order`` its slot (``order.after``) still has
        its process, as the local backend's slot waits for its fold's exit. On this node,
        that attempt's thread calls ``launch`` the moment its process is gone (no thread to
        wake first); on another node, this one starts once the driver says that attempt
        ended (the ``waiting`` message asks it to). Returns the attempt that thread
        launched; None when this one may launch now; how it ended when the driver ended it
        before it started."""
        after = order.after or ""
        if order.after_node == self.node:
            turn = _Turn(launch, order.marker, self.ends)
            with self.turn_lock:
                stale = self.next_up.get(after)
                self.next_up[after] = turn
            if stale is not None:  # one that waited for the same attempt, whose task died
                stale.superseded = True  # (the driver then sent this one in its place)
                stale.done.set()
            try:
                if after in self.alive:
                    self._wait(turn.done, order, conn, elsewhere=False)
            finally:
                with self.turn_lock:
                    mine = self.next_up.get(after) is turn
                    if mine:  # not taken: nobody launches it but this thread
                        del self.next_up[after]
            if not mine:  # that attempt's thread took it (or a newer one superseded it)
                turn.done.wait()
                if turn.superseded:
                    raise _Superseded
                if turn.error is not None:
                    raise turn.error
                if turn.out is not None:  # launched (else declined: it was ended)
                    return turn.out
        else:
            done = self.turns[order.marker] = threading.Event()
            try:
                self._wait(done, order, conn, elsewhere=True)  # the driver says go (or ends it)
            finally:
                self.turns.pop(order.marker, None)
        request = self.ends.pop(order.marker, None)
        if request is None:
            return None
        now = time.time()
        return AttemptResult(
            fold_id=order.fold.fold_id, attempt=order.number, status=request[0], started_at=now,
            ended_at=now, duration_s=0.0, error=f"{request[1]} (before it started)",
            log_path=str(self.paths.log(order.fold.fold_id, order.number)))

    def _wait(self, done: threading.Event, order: AttemptOrder, conn: Connection,
              elsewhere: bool) -> None:
        """Tell the driver ``order`` waits here (it can now reach it to end it), then wait
        until ``done``, an end asked for, or its task gone (:meth:`run` sees that)."""
        try:
            conn.send([("waiting", self.node, elsewhere)])
            while not done.wait(TURN_POLL):
                if order.marker in self.ends or conn.poll():
                    return
        except OSError:  # its task is gone
            pass

    def _launch(self, order: AttemptOrder, gpu: int | None, task: ChildTask, watchers: Watchers,
                log_path: Path) -> Attempt:
        """Start ``order``'s fold in a fresh process, on a slot of ``gpu``."""
        with self.launch_lock:
            slot = self._slot(gpu)
            a = Attempt(order.fold, order.number, order.used, slot, order.limits, watchers,
                        log_path, order.marker)
            a.launch(self.launcher, task, time.monotonic())
            self.alive.add(order.marker)
            a.announce()
        if self.s.spares:  # its slot's spare, if it had one, was taken: the next one now
            try:
                os.write(self._wake_w, b"!")
            except BlockingIOError:  # a wake-up is already pending
                pass
        return a

    def _gone(self, marker: str) -> None:
        """``marker``'s process is gone: launch the attempt waiting here for its slot."""
        self.alive.discard(marker)
        with self.turn_lock:  # taken: its waiting thread leaves the launch to this one
            turn = self.next_up.pop(marker, None)
        if turn is not None:
            turn()

    def run(self, order: AttemptOrder, gpu: int | None,
            conn: Connection) -> Iterator[list[tuple[Any, ...]]]:
        """Run one attempt here on ``gpu`` for the task on ``conn``, once its turn came
        (:meth:`take_turn`); yield what it says, in batches (what waited less than
        :data:`HOLD` for company), the last one with how it ended."""
        term = Terminator(self.launcher.pids, strays=False, stray_grace=self.s.grace)
        events = _Collector(self.host, self.node)
        inventory = self._inventory() if gpu is not None else None
        watchers = Watchers(term, GpuWatch(inventory, lambda text: None), OomCounter(), events)
        log_path = self.paths.log(order.fold.fold_id, order.number)
        task = replace(order.task, gpu=gpu, run_dir=str(self.root), log_path=str(log_path),
                       workdir=self.workdir)
        launch = functools.partial(self._launch, order, gpu, task, watchers, log_path)
        a: Attempt | None = None
        if order.after is not None:  # (all of the above is ready before the turn comes)
            try:
                turn = self.take_turn(order, conn, launch)
            except _Superseded:
                return
            if isinstance(turn, AttemptResult):
                yield [("final", turn, "")]
                return
            if turn is None and conn.poll():  # its task went away meanwhile: nobody is
                return  # left to run it for
            a = turn
        if a is None:
            a = launch()
        log = _LogTail(log_path)
        held: list[tuple[Any, ...]] = _drain(events)
        due = time.monotonic() + HOLD
        ended = None
        try:
            while ended is None:
                fd = a.fd
                timeout = 0.1 if not held else max(0.0, due - time.monotonic())
                ready = wait([a.sentinel] + ([fd] if fd is not None else []), timeout)
                if fd is not None and fd in ready:
                    a.read()
                if a.sentinel in ready:
                    ended = a.finish()
                    self._gone(order.marker)  # the next fold of its slot starts now
                else:
                    request = self.ends.pop(order.marker, None)
                    if request is not None:
                        a.end(request[0], request[1], time.monotonic(), hard=request[2])
                    a.enforce(time.monotonic())
                    if term:  # something of this attempt is being ended. Else a poll finds
                        # nothing (no tree to join an escapee to, strays off) and costs a read
                        # of every thread's children here
                        term.poll(time.monotonic())
                new = _drain(events) + log.chunks(force=ended is not None)
                now = time.monotonic()
                if new and not held:
                    due = now + HOLD
                if any(m[0] == "result" for m in new):
                    due = min(due, now + RESULT_HOLD)
                held += new
                if held and ended is None and now >= due:
                    yield held
                    held = []
        finally:
            if ended is None:  # its supervision failed, or nobody reads it any more (the
                try:  # generator was closed): the fold does not outlive it, nor run beside
                    a.end(Status.CANCELLED, "its supervision stopped", time.monotonic(), hard=True)
                    term.wait(time.monotonic() + Timing.REAP_WAIT)  # the slot's next one
                    a.wait_exit(Timing.REAP_WAIT)
                except Exception:  # noqa: BLE001 - the exception on its way out matters more
                    pass
            self._gone(order.marker)
        with self._cleaning:
            self._cleanups += 1
        try:
            # the driver frees the slot now, as the local backend does while its
            # terminator ends what the fold left; close() waits for these cleanups
            yield [*held, ("final", ended.result, ended.withdrawn)]
            term.wait(time.monotonic() + order.limits.grace + Timing.REAP_WAIT)
        finally:
            with self._cleaning:
                self._cleanups -= 1
                self._cleaning.notify_all()

    def close(self) -> None:
        """Wait (bounded) for the attempts' leftovers to be ended, retire the spares, drop
        this node's copies of the logs (the driver has them)."""
        with self._cleaning:
            self._cleaning.wait_for(lambda: self._cleanups == 0,
                                    timeout=self.s.grace + Timing.REAP_WAIT + 1.0)
        self._closing.set()
        self.listener.close()
        with self.launch_lock:
            self.launcher.close()
        os.close(self._wake_w)  # the spares' thread has returned or sees _closing
        shutil.rmtree(self.paths.logs, ignore_errors=True)
        try:
            self.root.rmdir()  # unless a fold left files in its run dir
        except OSError:
            pass


class _Superseded(Exception):
    """A waiting attempt whose place a newer one took (its task died meanwhile)."""


class _Turn:
    """A waiting attempt's launch, called by the thread of the attempt whose slot it waits
    for, the moment that one's process is gone; not when the driver ended it meanwhile."""

    def __init__(self, launch: Callable[[], Attempt], marker: str,
                 ends: dict[str, tuple[Status, str, bool]]) -> None:
        self.launch, self.marker, self.ends = launch, marker, ends
        self.done = threading.Event()
        self.out: Attempt | None = None
        self.error: Exception | None = None
        self.superseded = False

    def __call__(self) -> None:
        try:
            if self.marker not in self.ends:
                self.out = self.launch()
        except Exception as exc:  # noqa: BLE001 - raised in the waiting attempt's thread
            self.error = exc
        finally:
            self.done.set()


def _node_slots(node: str, settings: NodeSettings) -> list[Slot]:
    """This node's slots (see :func:`node_slots`)."""
    resources: dict[str, float] = {}
    for n in ray.nodes():  # type: ignore[no-untyped-call]
        if n["NodeID"] == node:
            resources = n.get("Resources", {})
    return node_slots(resources, settings)


def node_slots(resources: dict[str, float], settings: NodeSettings) -> list[Slot]:
    """The slots of a node with Ray ``resources``: ``per_gpu`` per GPU when folds use
    GPUs, else one per ``cpus_per_fold`` CPUs; never more than the run's folds in flight."""
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 0))
    if cpus < settings.cpus_per_fold:  # no attempt fits here: no spares either
        return []
    if gpus and settings.gpus:
        pairs = [(g, k) for g in range(gpus) for k in range(settings.per_gpu)]
        return [Slot(i, gpu=g) for i, (g, _) in enumerate(pairs[: settings.workers])]
    return [Slot(i) for i in range(min(math.floor(cpus / settings.cpus_per_fold), settings.workers))]


def warm_workers(resources: dict[str, float], settings: NodeSettings) -> int:
    """How many Ray workers the driver starts on a node with Ray ``resources`` before the
    first attempt (see :func:`warm_worker`): one per slot, and one more per slot as far as
    the node has room for a slot's next attempt to start beside the one that handed it
    the slot (:meth:`NodeHelper.take_turn`); else that next attempt's task waits for a
    worker to be started, a few hundred milliseconds, the first time."""
    room = len(node_slots(resources, replace(settings, workers=sys.maxsize)))
    return min(room, 2 * len(node_slots(resources, settings)))


def _drain(events: _Collector) -> list[tuple[Any, ...]]:
    out, events.out = events.out, []
    return out


class _LogTail:
    """The new bytes of a log file, at most every :data:`LOG_CHUNK_INTERVAL`."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.last = path, 0, 0.0

    def chunks(self, force: bool = False) -> list[tuple[Any, ...]]:
        now = time.monotonic()
        if not force and now - self.last < LOG_CHUNK_INTERVAL:
            return []
        self.last = now
        out: list[tuple[Any, ...]] = []
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                while True:
                    data = f.read(LOG_CHUNK_MAX)
                    if not data:
                        break
                    self.offset += len(data)
                    out.append(("log", data))
                    if not force:
                        break
        except OSError:
            pass
        return out


def warm_worker(hold: float) -> int:
    """A task that does nothing for ``hold`` seconds. The driver sends :func:`warm_workers`
    of them to each node before the first attempt: Ray then starts the workers that the
    attempts' tasks will run in side by side, each importing this module, instead of one at
    a time as the first attempts wait for them (a second or more each on a busy machine)."""
    time.sleep(hold)
    return os.getpid()


def run_attempt(order: AttemptOrder, settings: NodeSettings) -> Iterator[list[tuple[Any, ...]]]:
    """The body of an attempt's Ray task: on the node Ray chose, with the GPU it gave.

    It sends the attempt to its node's helper over the helper's local socket and yields
    what it hears (batches of what the attempt says) until the helper closes.
    """
    ids = ray.get_gpu_ids()
    gpu = int(ids[0]) if ids else None
    node = ray.get_runtime_context().get_node_id()
    conn = _connect_helper(helper_address(settings.run_token, node), node)
    last: list[tuple[Any, ...]] = []
    try:
        conn.send((order, gpu))
        while True:
            try:
                batch = conn.recv()
            except EOFError:  # the helper closed: the attempt and its leftovers are gone
                break
            if batch[0][0] == "fault":  # the helper failed to run it: the task fails with it
                raise RuntimeError(batch[0][1])
            last = batch
            yield batch
    finally:
        conn.close()
    if not last or last[-1][0] != "final":  # the helper went away before it said how it ended
        raise RuntimeError(f"the foldrunner helper on node {node} stopped before the attempt ended")


def _connect_helper(address: str, node: str) -> Connection:
    """A connection to the run's helper on this node, which may not exist yet (the driver
    creates helpers as nodes join): tried for :data:`HELPER_WAIT` seconds."""
    deadline = time.monotonic() + HELPER_WAIT
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no foldrunner helper on node {node} after {HELPER_WAIT:g}s"
                                   ) from None
            time.sleep(0.05)
            continue
        if not _same_user(sock):
            sock.close()
            raise RuntimeError(f"the foldrunner helper's socket on node {node} belongs to"
                               " another user")
        return Connection(sock.detach())


def _same_user(sock: socket.socket) -> bool:
    """Whether the process at the other end of a local socket runs as this user (the
    socket's name is visible to every user of the machine; what travels on it is pickled)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return bool(uid == os.getuid())
