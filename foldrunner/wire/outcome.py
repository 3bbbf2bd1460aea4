"""The shared vocabulary of the parent and the child: statuses, outcomes, timings.

This module is imported by the child process: keep it free of heavy imports.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Status(str, enum.Enum):
    """The final status of one attempt (and of a fold: its final attempt)."""

    OK = "ok"
    """The entry point returned its metrics."""
    ERROR = "error"
    """The entry point raised; ``error`` holds the exception's type and message."""
    TIMEOUT = "timeout"
    """Past ``limits.timeout`` (or ``limits.stall``); the fold's tree was killed."""
    CRASHED = "crashed"
    """The process died without a result: a signal, a non-zero exit, a bad result."""
    MEMORY = "memory"
    """Over ``max_rss`` / ``max_gpu_memory``, or killed by the kernel's OOM killer."""
    CANCELLED = "cancelled"
    """Interrupted or past the deadline: not retried, run again by ``--resume``."""
    PRUNED = "pruned"
    """Adaptive search: its trial was stopped by the pruner (ended, or never launched)."""
    RUNNING = "running"
    """Journal only: the attempt has started and not ended (yet)."""

    def __str__(self) -> str:
        return self.value


#: statuses that a fold's attempt can end with and that ``retry.on`` may name
RETRYABLE = (Status.TIMEOUT, Status.CRASHED, Status.MEMORY, Status.ERROR)


@dataclass
class ChildOutcome:
    """What the child sends when its entry point has finished (the child never raises).

    ``status`` is ``ok`` (``metrics`` set) or ``error`` (``error_type``, ``error``,
    ``traceback`` set). ``memory_error`` marks errors that mean "out of memory"
    (``MemoryError``, TensorFlow's ``ResourceExhaustedError``).
    """

    status: Status
    metrics: dict[str, Any] = field(default_factory=dict)
    error_type: str = ""
    error: str = ""
    traceback: str = ""
    memory_error: bool = False
    started_at: float = 0.0
    """``time.time()`` when the entry point was called."""
    ended_at: float = 0.0
    maxrss_kb: int = 0
    """The child's own peak RSS (``ru_maxrss``, its waited-for children included)."""


@dataclass
class AttemptResult:
    """The orchestrator's account of one ended attempt: what the journal stores."""

    fold_id: str
    attempt: int
    status: Status
    started_at: float
    ended_at: float
    duration_s: float
    gpu: int | None = None
    pid: int | None = None
    exit_code: int | None = None
    signal: str | None = None
    error: str = ""
    traceback: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = None
    lingered: bool = False
    note: str = ""
    log_path: str = ""
