"""Every default of foldrunner in one place: the spec's limits and the engine's timings.

The spec's models (:mod:`foldrunner.config.spec`) and the engine's
:class:`~foldrunner.engine.limits.Limits` both take their defaults from here.
"""

from __future__ import annotations


class Defaults:
    """The defaults of the spec's ``limits``, ``retry`` and ``resources`` keys."""

    TIMEOUT = 1800.0
    """``limits.timeout``: seconds one attempt may run."""
    GRACE = 10.0
    """``limits.grace``: seconds between SIGTERM and SIGKILL."""
    EXIT_TIMEOUT = 30.0
    """``limits.exit_timeout``: seconds a fold may take to exit after its result."""
    ATTEMPTS = 3
    """``retry.attempts``: attempts per fold in all."""
    RETRY_ON = ("timeout", "crashed", "memory")
    """``retry.on``: the outcomes retried."""
    BACKOFF = 5.0
    """``retry.backoff``: base seconds before a retry (doubled per attempt, jittered)."""
    PER_GPU = 1
    """``resources.per_gpu``: folds sharing one GPU."""
    MIN_FREE_MEMORY = 1 << 30
    """``resources.min_free_memory``: bytes a GPU must have free to be used."""


class Timing:
    """Named timings of the engine. Every deadline is taken from ``time.monotonic()``."""

    SAMPLE_INTERVAL = 0.25
    """Seconds between two memory samples of a running fold's process tree."""
    FIRST_SAMPLE_DELAY = 0.05
    """A fold's tree is first sampled this long after it starts (short folds never are)."""
    REAP_WAIT = 2.0
    """Seconds to wait for a SIGKILLed process to be gone before reporting it as stuck."""
    RESULTS_FLUSH_INTERVAL = 2.0
    """``results.csv`` is rewritten at most this often while folds finish (and at the end)."""
    PREFLIGHT_TIMEOUT = 300.0
    """The preflight import of the entry point must finish within this many seconds."""
    STRAY_GRACE = 5.0
    """Default grace of a process that came back to us and no fold owns any more (the
    scheduler gives such processes the spec's ``limits.grace``)."""
    SWEEP_EVERY = 0.1
    """Seconds between two sweeps of the orchestrator's children for escapees that came
    back to it, while no tree is being ended (every loop turn while one is)."""
    BACKOFF_JITTER = 0.25
    """Retry backoff is multiplied by a random factor in ``[1 - j, 1 + j]``."""
