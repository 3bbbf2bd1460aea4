"""What an ended attempt comes to: its status, error, metrics and note.

:func:`classify` is a pure function of what was observed of the attempt
(:class:`Observed`) and its process's exit code: the one place that says when a fold is
``ok``, ``error``, ``memory``, ``timeout``, ``crashed`` or ``cancelled``.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foldrunner.engine.limits import Limits
from foldrunner.procs import proctree
from foldrunner.wire.outcome import ChildOutcome, Status

MiB = 1024 * 1024


@dataclass
class Observed:
    """What the orchestrator saw of one attempt while it ran."""

    outcome: ChildOutcome | None = None
    """The fold's result message, if one came."""
    kill_status: Status | None = None
    """What the fold was ended as (timeout, memory, cancelled, crashed), if it was."""
    kill_reason: str = ""
    hard: bool = False
    """Ended with SIGKILL at once (no grace)."""
    lingered: bool = False
    """It did not exit within ``exit_timeout`` after its result and was ended."""
    bad_frame: str = ""
    """Why its pipe carried something that is not a message, if it did."""
    peak_rss: int = 0
    peak_gpu: int = 0

    def peak_rss_mb(self) -> float | None:
        own = self.outcome.maxrss_kb * 1024 if self.outcome is not None else 0
        peak = max(self.peak_rss, own)
        return round(peak / MiB, 3) if peak else None


Verdict = tuple[Status, str, str, dict[str, Any], str]
"""``(status, error, traceback, metrics, note)``."""


def classify(seen: Observed, code: int | None, limits: Limits, log_path: Path,
             oom_killed: bool) -> Verdict:
    """The verdict on an attempt whose process ended with ``code`` (``oom_killed``: the
    kernel's OOM kill count rose while it ran and it died of SIGKILL)."""
    how = proctree.describe_exit(code)
    log = f"see {log_path}"
    out = seen.outcome
    notes = []
    if seen.lingered:
        notes.append(f"did not exit within exit_timeout {limits.exit_timeout:g}s "
                     "after sending its result; its process tree was killed")
    if out is not None:
        if out.status is Status.OK:
            if code not in (0, None) and not seen.lingered:
                notes.append(f"{how} after sending its result")
            return Status.OK, "", "", dict(out.metrics), "; ".join(notes)
        status = Status.MEMORY if out.memory_error else Status.ERROR
        return status, f"{out.error_type}: {out.error}", out.traceback, {}, "; ".join(notes)
    if seen.kill_status is not None:
        reason = seen.kill_reason
        if code == -signal.SIGKILL and not seen.hard:
            reason += f"; still alive {limits.grace:g}s after SIGTERM, killed with SIGKILL"
        return seen.kill_status, f"{reason} ({log})", "", {}, how
    if oom_killed:
        return (
            Status.MEMORY,
            f"killed by SIGKILL from the kernel's OOM killer (its oom_kill count rose "
            f"while the fold ran; we sent no signal) ({log})", "", {}, "",
        )
    if seen.bad_frame:
        return Status.CRASHED, f"{seen.bad_frame} ({log})", "", {}, how
    return Status.CRASHED, f"{how} without sending a result ({log})", "", {}, ""
