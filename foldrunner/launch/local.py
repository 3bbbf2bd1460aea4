"""How an attempt's process comes to exist on this machine: from a warm spare of its
slot when one is ready, else cold from the zygote or the fold server.

The engine asks for processes through :class:`LocalLauncher` and knows nothing of
spares, zygotes or multiprocess: the launcher keeps the spares warm, hands their pipes
and sentinels to the engine's wait, and falls back to the plain fold server when the
zygote stops serving.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from foldrunner.child.task import ChildTask
from foldrunner.gpu.inventory import Slot
from foldrunner.launch.launcher import Child, server_pids, start_child
from foldrunner.launch.spares import SparePool
from foldrunner.procs.terminate import Terminator
from foldrunner.store.paths import RunPaths

if TYPE_CHECKING:  # the engine drives launchers; a launcher never imports the engine
    from foldrunner.engine.attempt import Attempt


@dataclass
class Launched:
    """A started process for one attempt, and what came on its pipe already."""

    child: Child
    buf: bytearray = field(default_factory=bytearray)
    via_spare: bool = False
    """It was a warm spare: until it says it started its task, its death is the spare's
    fault, not the fold's."""
    host: str = field(default_factory=socket.gethostname)
    """The machine it runs on."""


class LocalLauncher:
    """Starts attempts' processes on this machine; keeps one warm spare per slot."""

    def __init__(
        self,
        *,
        run_id: str,
        paths: RunPaths,
        terminator: Terminator,
        grace: float,
        notes: Callable[[str], None],
        env: dict[str, str],
        workdir: str,
        start_method: str = "forkserver",
        spares: bool = False,
        preload: Iterable[str] = (),
        server: Any = None,
    ) -> None:
        self.paths, self.start_method, self.server, self.notes = paths, start_method, server, notes
        self.spares = SparePool(
            enabled=spares, preload=list(preload), env=env, workdir=workdir, run_id=run_id,
            paths=paths, start_method=start_method, notes=notes, terminator=terminator,
            grace=grace,
        )

    def start(self, task: ChildTask, slot: Slot) -> Launched:
        """A process running ``task`` on ``slot``: its ready spare, else a cold start."""
        spare = self.spares.take(slot)
        if spare is not None and self.spares.hand_over(spare, task):
            return Launched(spare.child, spare.buf, via_spare=True)
        return Launched(self._start_cold(task))

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

    def attempt(self, attempt: Attempt, task: ChildTask, now: float) -> Attempt:
        """Launch ``attempt`` here, running ``task``."""
        attempt.launch(self, task, now)
        return attempt

    def withdrawn(self, slot: Slot, how: str) -> None:
        """The spare handed ``slot``'s attempt died before it took it."""
        self.spares.died_in_handover(slot.index, how)

    # -- keeping spares warm -------------------------------------------------------
    def keep_warm(self, slots: list[Slot], waiting: int, now: float) -> None:
        """A spare for each slot while ``waiting`` folds wait; none when nothing waits."""
        if waiting:
            self.spares.top_up(slots, waiting)
        elif self.spares.by_slot:
            self.spares.retire_all()
        self.spares.poll_retiring(now)

    def retire(self) -> None:
        """No more launches: unused spares exit (their task pipes close; SIGKILL if they
        linger)."""
        self.spares.retire_all()

    def stop(self, now: float) -> None:
        """A stop: spares are killed at once (it never waits for their imports)."""
        self.spares.retire_all()
        self.spares.hurry(now)

    def busy(self) -> bool:
        """Spares are still retiring."""
        return bool(self.spares.retiring)

    def poll(self, now: float) -> None:
        self.spares.poll_retiring(now)

    # -- the engine's wait ---------------------------------------------------------
    def waitables(self) -> list[int]:
        """Pipes and sentinels of the spares, for the engine's wait."""
        return [*self.spares.fds(), *self.spares.sentinels()]

    def on_ready(self, ready: set[Any]) -> None:
        """Read the spares' pipes among ``ready``, then note the deaths among them."""
        fds, sentinels = self.spares.fds(), self.spares.sentinels()
        for obj in ready:
            if obj in fds:
                self.spares.on_readable(fds[obj])
        for obj in ready:
            if obj in sentinels and sentinels[obj].slot in self.spares.by_slot:
                self.spares.on_death(sentinels[obj])

    def fault(self) -> str | None:
        """None: this machine's processes always can be started."""
        return None

    def pids(self) -> set[int]:
        """Processes of ours that are not folds: the fork servers and the spares."""
        return server_pids() | self.spares.pids()

    def close(self) -> None:
        """Retire every spare and wait (bounded) until they are gone."""
        self.spares.close_all()
