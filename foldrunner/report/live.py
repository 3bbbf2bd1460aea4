"""``foldrunner run --report``: the report rewritten as folds finish, without slowing the run.

:class:`LiveReport` is an event subscriber that only marks the report out of date; on the
engine's tick, at most every :data:`INTERVAL` seconds (longer when the report takes long to
build: never more than a tenth of the time), it starts ``python -m foldrunner report`` as a
separate process. The orchestrator neither imports plotly nor holds the page in memory,
and its loop never waits for a report: a build still going when the next is due simply
delays it. The child runs in the orchestrator's session (so the reaper leaves it alone)
but in a process group of its own (so the terminal's Ctrl-C does not cut it short), and
:meth:`LiveReport.finish` waits for it and writes the last report when the run ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from foldrunner.config.plan import Fold
from foldrunner.engine.events import AttemptStart, Events
from foldrunner.errors import UsageError
from foldrunner.wire.outcome import AttemptResult

INTERVAL = 5.0
"""Seconds between two starts of the report's build, at least."""
BUSY_SHARE = 10.0
"""The interval is at least this many times the last build's duration."""
FINAL_TIMEOUT = 300.0
"""Seconds the last report of a run may take before it is given up (with a note)."""


def check_report_deps() -> None:
    """A :class:`~foldrunner.errors.UsageError` (exit 2) when plotly is not installed;
    it is not imported here (the orchestrator never imports it)."""
    import importlib.util

    if importlib.util.find_spec("plotly") is None:
        raise UsageError("the report needs plotly, which is not installed: "
                         "pip install 'foldrunner[report]'")


class LiveReport(Events):
    """Keeps ``output`` (``RUN_DIR/report.html`` by default) up to date during a run."""

    def __init__(self, run_dir: Path, output: Path | None = None,
                 notes: Callable[[str], None] | None = None) -> None:
        self.run_dir = run_dir.absolute()
        self.output = output.absolute() if output is not None else None
        self.notes = notes or _no_notes
        self.dirty = False
        self.started = False
        """Whether the run began (a run refused before it began gets no report)."""
        self.interval = INTERVAL
        self.last_start = float("-inf")
        self._proc: subprocess.Popen[bytes] | None = None
        self._err: IO[bytes] | None = None
        self._failed_once = False

    # -- events --------------------------------------------------------------------
    def run_started(self, total: int, already_ok: int) -> None:
        self.started = self.dirty = True

    def attempt_started(self, start: AttemptStart) -> None:
        self.dirty = True

    def attempt_ended(self, fold: Fold, result: AttemptResult, final: bool) -> None:
        self.dirty = True

    def tick(self, now: float) -> None:
        self._reap()
        if self.dirty and self._proc is None and now - self.last_start >= self.interval:
            self._start()

    # -- the builds ------------------------------------------------------------------
    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "foldrunner", "report", str(self.run_dir)]
        return cmd + (["--output", str(self.output)] if self.output is not None else [])

    def _start(self) -> None:
        self.dirty = False
        self.last_start = time.monotonic()
        self._err = tempfile.TemporaryFile()
        own_group: dict[str, Any] = (  # Popen's process_group is Python 3.11's
            {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp})
        self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=self._err,
                                      close_fds=True, **own_group)

    def _reap(self, wait: float | None = None) -> None:
        """Note how the build in flight ended, if it has (waiting up to ``wait`` s)."""
        if self._proc is None:
            return
        try:
            rc = self._proc.wait(wait) if wait is not None else self._proc.poll()
        except subprocess.TimeoutExpired:
            self._proc.kill()
            rc = self._proc.wait()
            self.notes(f"the report of {self.run_dir} took over {wait:g}s and was given up")
        if rc is None:
            return
        took = time.monotonic() - self.last_start
        self.interval = max(INTERVAL, BUSY_SHARE * took)
        if rc != 0 and not self._failed_once:
            self._failed_once = True
            why = self._stderr().strip().splitlines()
            self.notes(f"the report could not be written (exit {rc}): "
                       f"{why[-1] if why else 'no message'}; the run goes on")
        self._proc = None
        if self._err is not None:
            self._err.close()
            self._err = None

    def _stderr(self) -> str:
        if self._err is None:
            return ""
        self._err.seek(0)
        return self._err.read(8192).decode("utf-8", "replace")

    def finish(self) -> None:
        """Wait for the build in flight; then, if the run began, write the last report."""
        try:
            self._reap(wait=FINAL_TIMEOUT)
            if not self.started:
                return
            self._start()
            self._reap(wait=FINAL_TIMEOUT)
        except BaseException:  # Ctrl-C while waiting: the build does not outlive the run
            if self._proc is not None:
                self._proc.kill()
                self._proc.wait()
                self._proc = None
            raise


def _no_notes(_: str) -> None:
    pass
