"""The clocks and limits an attempt runs under, and the retry policy."""

from __future__ import annotations

from dataclasses import dataclass

from foldrunner.defaults import Defaults
from foldrunner.wire.outcome import Status


@dataclass(frozen=True)
class Limits:
    """The clocks and limits the engine enforces, in seconds and bytes (defaults:
    :class:`foldrunner.defaults.Defaults`, the same as the spec's)."""

    timeout: float = Defaults.TIMEOUT
    grace: float = Defaults.GRACE
    exit_timeout: float = Defaults.EXIT_TIMEOUT
    stall: float | None = None
    max_rss: int | None = None
    max_gpu_memory: int | None = None
    attempts: int = Defaults.ATTEMPTS
    retry_on: frozenset[Status] = frozenset(Status(s) for s in Defaults.RETRY_ON)
    backoff: float = Defaults.BACKOFF
