"""Daemon threads kept for the next job: the Ray backend runs one long job per attempt in
flight (the driver's relay of its items, the node helper's service of its task), and
starting a thread for each stalled the thread that starts it for a millisecond or two."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class Threads:
    """Runs each job in a daemon thread of its own, reusing the threads whose job ended.

    Daemon threads: a job that never returns (a call to a lost node) never holds up the
    process's exit, unlike :class:`concurrent.futures.ThreadPoolExecutor`'s.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._free = 0
        """Threads waiting for a job or about to: each job takes one, or starts one."""

    def run(self, job: Callable[[], None]) -> None:
        """Start ``job`` now, in a free thread or a new one (never behind another job)."""
        with self._lock:
            start = self._free == 0
            if not start:
                self._free -= 1
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._work, daemon=True, name=self.name).start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            finally:
                with self._lock:
                    self._free += 1
