"""The driver's side of the Ray backend: one Ray task per attempt, a stand-in for each
attempt in flight that the scheduler waits on like a local one.

A relay thread per attempt reads what the task yields (see :mod:`foldrunner.remote.node`)
and wakes the scheduler's wait through a pipe; the scheduler's thread then hands it to
the run's events (journal, results files, live view) exactly as a local attempt would.
The attempt's clocks are kept on its node; the driver keeps a backstop (timeout, grace,
exit timeout and a minute more) for a node that stops answering.

An attempt whose result came hands its slot to the scheduler's next attempt while its
process exits; the next one's task waits on its node for that process (or, on another
node, for this driver's word that the attempt ended): one fold per slot at a time, as
locally.
"""

from __future__ import annotations

import itertools
import os
import queue
import re
import socket
import threading
import time
from dataclasses import replace
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from foldrunner.child.task import ChildTask
from foldrunner.defaults import Timing
from foldrunner.engine.attempt import Attempt, Finished
from foldrunner.engine.events import AttemptStart
from foldrunner.engine.verdict import Observed
from foldrunner.gpu.inventory import Slot
from foldrunner.remote.node import (
    AttemptOrder,
    NodeHelper,
    NodeSettings,
    helper_name,
    run_attempt,
    warm_worker,
    warm_workers,
)
from foldrunner.remote.threads import Threads
from foldrunner.wire.outcome import AttemptResult, ChildOutcome, Status

BACKSTOP_SLACK = 60.0
"""Seconds past an attempt's own clocks after which the driver gives up on its node."""
NODE_REFRESH = 5.0
"""Seconds between two looks for nodes that joined (each gets its helper)."""
HEAD_CHECK = 0.25
"""Seconds between two probes of the head's GCS port."""
HEAD_LOST_AFTER = 4
"""Probes in a row that found nothing listening: the head is lost, in about a second
when the port refuses, in about three when connects time out (Ray itself would end the
driver's process after a minute without its GCS, and at once when the driver's raylet
was the head's and died with it: the loss must be told before that)."""

HELPER_THREADS = 8
"""Threads of a helper for the driver's calls (ends, close): its attempts' tasks reach it
on a socket of its own, served by threads it starts (Ray starts every thread of an actor
up front, and each one costs every sweep of the helper's children a read)."""

WARM_HOLD = 0.3
"""Seconds each of the warm-up tasks holds its worker (so that the next one needs another)."""
WARM_WAIT = 30.0
"""Seconds the run's start waits at most for its helpers and warm workers."""

_RemoteHelper = ray.remote(NodeHelper)
_attempt_task = ray.remote(run_attempt)
_warm_task = ray.remote(warm_worker)


class RayBackend:
    """Runs attempts as Ray tasks on the cluster ``ray.init`` connected to."""

    def __init__(self, settings: NodeSettings, *, gpus_per_fold: float, cpus_per_fold: float = 1.0,
                 handover: bool = True) -> None:
        self.settings = settings
        self.handover = handover
        """A fold's result hands its slot to the next attempt while its process exits. Not
        in an adaptive search: its pruner judges each fold at its end, and the next fold
        of a trial waits for that (``FoldSource.holds``)."""
        self.gpus_per_fold, self.cpus_per_fold = gpus_per_fold, cpus_per_fold
        self.helpers: dict[str, Any] = {}
        self.slot_nodes: dict[int, str] = {}
        """The node each slot's latest attempt ran on: its next attempt asks that node first."""
        self.handing: dict[int, RemoteAttempt] = {}
        """Slots whose attempt handed them over on its result while its process exits (by
        slot index: that attempt)."""
        self._numbers = itertools.count(1)
        self.gcs = str(ray.get_runtime_context().gcs_address)
        self.lost: str | None = None
        self.relays = Threads("foldrunner relay")
        """The attempts' relays (a thread per attempt in flight, started once)."""
        self._closing = threading.Event()
        self._refresh(warm=True)
        # Ray's calls to the head block (up to a minute) when it is gone: the scheduler's
        # loop never makes one; this thread watches the head and the nodes instead
        threading.Thread(target=self._watch, daemon=True, name="foldrunner ray watch").start()

    # -- the cluster's nodes -------------------------------------------------------
    def _watch(self) -> None:
        """Probe the head's GCS port every :data:`HEAD_CHECK` s; look for new nodes every
        :data:`NODE_REFRESH` s while the head answers."""
        misses, next_refresh = 0, time.monotonic() + NODE_REFRESH
        while not self._closing.wait(HEAD_CHECK):
            host, _, port = self.gcs.rpartition(":")
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=0.5).close()
                misses = 0
            except OSError:
                misses += 1
                if misses >= HEAD_LOST_AFTER:
                    self.lost = f"lost the Ray cluster's head (nothing answers at {self.gcs})"
                    return
                continue
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + NODE_REFRESH
                try:
                    self._refresh()
                except Exception:  # noqa: BLE001 - the next look tries again
                    pass

    def _refresh(self, warm: bool = False) -> None:
        """A helper on every live node (the driver owns them: they end with it). With
        ``warm``, wait (up to :data:`WARM_WAIT`) until every helper is ready and each node
        has Ray workers for the attempts' tasks (see :func:`warm_workers`)."""
        waits = []
        for node in ray.nodes():  # type: ignore[no-untyped-call]
            node_id = node["NodeID"]
            if not node.get("Alive") or node_id in self.helpers:
                continue
            self.helpers[node_id] = _RemoteHelper.options(  # one assignment: no lock needed
                name=helper_name(self.settings.run_token, node_id),
                namespace=self.settings.namespace, num_cpus=0,
                max_concurrency=HELPER_THREADS,
                max_restarts=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote(self.settings)
            if warm:
                waits.append(self.helpers[node_id].ready.remote())
                affinity = NodeAffinitySchedulingStrategy(node_id, soft=False)
                count = warm_workers(node.get("Resources", {}), self.settings)
                waits += [_warm_task.options(num_cpus=0, max_retries=0, scheduling_strategy=affinity)
                          .remote(WARM_HOLD) for _ in range(count)]
        if waits:  # a node that fails here fails its attempts later, as it would have anyway
            ray.wait(waits, num_returns=len(waits), timeout=WARM_WAIT)

    def helper(self, node_id: str) -> Any:
        return dict(self.helpers).get(node_id)

    # -- the Backend protocol ------------------------------------------------------
    def attempt(self, attempt: Attempt, task: ChildTask, now: float) -> RemoteAttempt:
        return RemoteAttempt(self, attempt, task, now)

    def withdrawn(self, slot: Slot, how: str) -> None:
        pass

    def keep_warm(self, slots: list[Slot], waiting: int, now: float) -> None:
        pass  # the watch thread keeps a helper on every node

    def fault(self) -> str | None:
        return self.lost

    def retire(self) -> None:
        pass

    def stop(self, now: float) -> None:
        pass

    def busy(self) -> bool:
        return False

    def poll(self, now: float) -> None:
        pass

    def waitables(self) -> list[Any]:
        return []

    def on_ready(self, ready: set[Any]) -> None:
        pass

    def pids(self) -> set[int]:
        return set()

    def close(self) -> None:
        self._closing.set()
        if self.lost is not None:  # nothing to ask a cluster that is gone
            self.helpers.clear()
            return
        for h in self.helpers.values():
            try:
                ray.get(h.close.remote(), timeout=self.settings.grace + Timing.REAP_WAIT + 5)
            except Exception:  # noqa: BLE001 - a helper of a lost node
                pass
            ray.kill(h)
        self.helpers.clear()

    def next_number(self) -> int:
        return next(self._numbers)


class RemoteAttempt:
    """An attempt running on a node, as the scheduler sees it."""

    def __init__(self, backend: RayBackend, local: Attempt, task: ChildTask, now: float) -> None:
        self.backend = backend
        self.fold, self.number, self.used = local.fold, local.number, local.used
        self.slot, self.marker, self.limits = local.slot, local.marker, local.limits
        self.log_path, self.events = local.log_path, local.w.events
        self.seen = Observed()
        self.ending = False
        self.handed_over = False
        """Its result came: its slot went to the next attempt while its process exits."""
        self.finished = False
        self._unsent_end: tuple[str, str, bool] | None = None
        """An end asked before its node was known: sent to that node's helper once it is."""
        self._key = -backend.next_number()
        self.node: str | None = None
        self.final: tuple[AttemptResult | None, str] | None = None
        self.failure = ""
        self.started_wall, self.started = time.time(), now
        lim = self.limits
        self.backstop = now + lim.timeout + lim.grace + lim.exit_timeout + BACKSTOP_SLACK
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_bytes(b"")
        self._q: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self._done_r, self._done_w = os.pipe()
        self._closing = threading.Lock()
        self._eof = False
        self.after = backend.handing.get(self.slot.index)
        """The attempt that handed this one its slot and is still in flight, if any."""
        self.successor: RemoteAttempt | None = None
        """The attempt waiting on another node for this one to end (told when it has)."""
        order = AttemptOrder(self.fold, self.number, self.used, self.marker, task, lim,
                             after=None if self.after is None else self.after.marker,
                             after_node=None if self.after is None else self.after.node)
        where: dict[str, Any] = {}
        node = backend.slot_nodes.get(self.slot.index)
        if node is not None and self.used == 1 and node in backend.helpers:
            # its slot's node first: the lease request goes straight to that node's raylet
            # (not through the driver's, which may have no room and pass it on); Ray
            # places it elsewhere when that node is full or gone. A retry goes where Ray
            # puts it, so that a fold that failed on a node may land on another
            where["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                node, soft=True, _spill_on_unavailable=True)
        self.refs = _attempt_task.options(
            num_gpus=backend.gpus_per_fold, num_cpus=backend.cpus_per_fold, max_retries=0,
            retry_exceptions=False, name=f"foldrunner {self.fold.fold_id}.{self.number}", **where,
        ).remote(order, backend.settings)
        self.slot.busy = True
        self._relayed = threading.Event()
        backend.relays.run(self._relay)

    # -- the relay thread ------------------------------------------------------------
    def _relay(self) -> None:
        try:
            for ref in self.refs:  # type: ignore[attr-defined]  # an ObjectRefGenerator
                batch = ray.get(ref)
                for item in batch:
                    self._q.put(item)
                with self._closing:
                    if self._w < 0:
                        return
                    os.write(self._w, b"!")
                if batch[-1][0] == "final":  # the node ends its leftovers on its own from here
                    break
        except Exception as exc:  # noqa: BLE001 - a lost node, a killed worker: the attempt's end
            self._q.put(("failed", _describe(exc)))
        finally:
            self._close_writers()
            self._relayed.set()

    def _close_writers(self) -> None:
        """Close the relay's ends (once: from the relay, or from the scheduler's thread
        when the cluster is gone and the relay may never return)."""
        with self._closing:
            if self._w >= 0:
                os.close(self._w)
                os.close(self._done_w)
                self._w = self._done_w = -1

    # -- the InFlight protocol -----------------------------------------------------
    @property
    def pid(self) -> int:
        return self._key

    @property
    def fd(self) -> int | None:
        return None if self._eof else self._r

    @property
    def sentinel(self) -> int:
        return self._done_r

    def announce(self) -> None:
        """Nothing yet: its start is told when its node says it started."""

    def read(self) -> None:
        try:
            while os.read(self._r, 4096):
                pass
            self._eof = True
        except BlockingIOError:
            pass
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return
            self._on(item)

    def _on(self, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == "started":
            _, pid, pid_started_at, started_at, gpu, host, node = item
            self.node, self.started_wall = node, started_at
            self.backend.slot_nodes[self.slot.index] = node
            self._send_end()
            lim = self.limits  # its clocks run from now, on its node
            self.backstop = (time.monotonic() + lim.timeout + lim.grace + lim.exit_timeout
                             + BACKSTOP_SLACK)
            self.events.attempt_started(AttemptStart(
                fold=self.fold, attempt=self.number, slot=Slot(self.slot.index, gpu=gpu), pid=pid,
                pid_started_at=pid_started_at, started_at=started_at, log_path=str(self.log_path),
                host=host, node=node,
            ))
        elif kind == "report":
            self.events.report(self.fold, self.number, item[1], item[2])
        elif kind == "result":
            self.seen.outcome = ChildOutcome(Status.OK)
            self.events.result_arrived(self.fold, self._here(item[1]))
            if not self.handed_over and self.backend.handover:
                # the slot's next attempt may be sent now: on this node it starts when this
                # one's process is gone (its task holds what it asked Ray for until then,
                # so Ray never gives that twice)
                self.handed_over = True
                self.backend.handing[self.slot.index] = self
                self.slot.busy = False
        elif kind == "waiting":  # on its node, for the attempt that handed it its slot
            self.node = item[1]
            self._send_end()
            if item[2]:  # that one runs on another node: this one starts once it ended
                if self.after is not None and not self.after.finished:
                    self.after.successor = self
                else:
                    self._go()
        elif kind == "log":
            with open(self.log_path, "ab") as f:
                f.write(item[1])
        elif kind == "final":
            self.final = (item[1], item[2])
        elif kind == "failed":
            self.failure = item[1]

    def _here(self, result: AttemptResult) -> AttemptResult:
        """The node's account, naming the driver's copy of the log."""
        here = str(self.log_path)
        return replace(result, log_path=here, error=result.error.replace(result.log_path, here),
                       note=result.note.replace(result.log_path, here))

    def finish(self) -> Finished:
        self._relayed.wait(0.5 if self.backend.lost else 5.0)
        self.read()
        os.close(self._r)
        os.close(self._done_r)
        self.finished, self.after = True, None  # (no chain of attempts kept alive)
        if not self.handed_over:
            self.slot.busy = False
        elif self.backend.handing.get(self.slot.index) is self:
            del self.backend.handing[self.slot.index]
        if self.successor is not None:
            self.successor._go()
        if self.final is not None:
            result, withdrawn = self.final
            return Finished(None if result is None else self._here(result), withdrawn)
        status = self.seen.kill_status or Status.CRASHED
        reason = self.seen.kill_reason if self.seen.kill_status else ""
        error = "; ".join(x for x in (reason, f"its Ray task failed: {self.failure}") if x)
        return Finished(AttemptResult(
            fold_id=self.fold.fold_id, attempt=self.number, status=status,
            started_at=self.started_wall, ended_at=time.time(),
            duration_s=round(time.monotonic() - self.started, 6),
            error=f"{error} (see {self.log_path})", log_path=str(self.log_path),
        ))

    def enforce(self, now: float) -> None:
        if now >= self.backstop and not self.ending:
            self.end(Status.TIMEOUT, "its node stopped answering", now, hard=True)
            ray.cancel(self.refs, force=True)

    def next_wakeup(self) -> float:
        return self.backstop

    def end(self, status: Status, reason: str, now: float, hard: bool = False) -> None:
        if status is not Status.OK and self.seen.kill_status is None:
            self.seen.kill_status, self.seen.kill_reason = status, reason
        self.seen.hard = self.seen.hard or hard
        self.ending = True
        if self.backend.lost:  # its node's helper ends it when Ray ends the driver's job;
            self._close_writers()  # the relay may never hear of it: the attempt ends here
            return
        first = self._unsent_end  # the first status asked for stands; hard hurries it
        self._unsent_end = ((first[0], first[1], first[2] or hard) if first
                            else (status.value, reason, hard))
        if not self._send_end():  # not started on a node yet: it never will (if it was
            ray.cancel(self.refs, force=False)  # about to, its start sends the end there)

    def _helper(self) -> Any:
        """The helper of its node, once that is known."""
        return self.backend.helper(self.node) if self.node else None

    def _go(self) -> None:
        helper = self._helper()
        if helper is not None:
            helper.go.remote(self.marker)

    def _send_end(self) -> bool:
        """Send an end asked for to the helper of its node, once that is known."""
        helper = self._helper()
        if self._unsent_end is None or helper is None:
            return False
        helper.end.remote(self.marker, *self._unsent_end)
        self._unsent_end = None
        return True

    def known_pids(self) -> set[int]:
        return set()

    def wait_exit(self, timeout: float) -> None:
        self._relayed.wait(timeout)


def _describe(exc: BaseException) -> str:
    """One line on why a task failed: the exception inside a task's error, else Ray's."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    last = _ANSI.sub("", lines[-1]) if lines else ""
    return f"{type(exc).__name__}: {last}"[:500]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
