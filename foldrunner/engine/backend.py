"""What the scheduler needs of a backend and of an attempt in flight.

The local backend is :class:`~foldrunner.launch.local.LocalLauncher`, whose attempts are
:class:`~foldrunner.engine.attempt.Attempt` objects supervising a child process here.
The Ray backend (:mod:`foldrunner.remote`) runs that same ``Attempt`` inside a Ray task on
another node; its attempts in flight are stand-ins that relay what the remote one says.
The scheduler sees only these two protocols.
"""

from __future__ import annotations

from typing import Any, Protocol

from foldrunner.child.task import ChildTask
from foldrunner.config.plan import Fold
from foldrunner.engine.attempt import Attempt, Finished
from foldrunner.engine.verdict import Observed
from foldrunner.gpu.inventory import Slot
from foldrunner.wire.outcome import Status


class InFlight(Protocol):
    """An attempt the scheduler waits on."""

    fold: Fold
    number: int
    used: int
    slot: Slot
    marker: str
    ending: bool
    seen: Observed

    @property
    def pid(self) -> int:
        """Its key while it runs (a local root pid, or a stand-in's own number)."""

    @property
    def fd(self) -> int | None:
        """What to wait on for its messages; None when nothing more will come."""

    @property
    def sentinel(self) -> int:
        """Ready once it has ended."""

    def announce(self) -> None:
        """Called once the scheduler holds it: tell the events it started (if it knows)."""

    def read(self) -> None: ...

    def finish(self) -> Finished: ...

    def enforce(self, now: float) -> None: ...

    def next_wakeup(self) -> float: ...

    def end(self, status: Status, reason: str, now: float, hard: bool = False) -> None: ...

    def known_pids(self) -> set[int]: ...

    def wait_exit(self, timeout: float) -> None: ...


class Backend(Protocol):
    """Where attempts run: it launches them and keeps what they need warm."""

    def attempt(self, attempt: Attempt, task: ChildTask, now: float) -> InFlight:
        """Launch ``attempt`` running ``task``; what the scheduler then waits on."""

    def withdrawn(self, slot: Slot, how: str) -> None:
        """The attempt on ``slot`` never ran its fold (a spare died in its handover)."""

    def keep_warm(self, slots: list[Slot], waiting: int, now: float) -> None: ...

    def retire(self) -> None:
        """No more launches: what is kept warm may go."""

    def stop(self, now: float) -> None:
        """A stop: what is kept warm goes at once."""

    def busy(self) -> bool:
        """Something of its own is still ending."""

    def poll(self, now: float) -> None: ...

    def waitables(self) -> list[Any]:
        """Its own pipes and sentinels for the scheduler's wait."""

    def on_ready(self, ready: set[Any]) -> None:
        """Some of :meth:`waitables` are ready."""

    def pids(self) -> set[int]:
        """Children of this process it keeps (servers, spares): never swept."""

    def fault(self) -> str | None:
        """Why it cannot go on (e.g. its cluster is gone), or None."""

    def close(self) -> None: ...
