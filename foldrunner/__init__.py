"""foldrunner: run every cross-validation fold in a fresh process.

The public API: :func:`run`, :func:`load_results`, :func:`load_reports`, :class:`FoldContext`, the exceptions.
Attributes are imported lazily, so that a fold's process (which imports
``foldrunner.child.entry``) does not pay for pandas, pydantic or YAML.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "run": "foldrunner.orchestrate.api",
    "RunOptions": "foldrunner.orchestrate.api",
    "load_results": "foldrunner.store.results",
    "load_reports": "foldrunner.store.reports",
    "summarize": "foldrunner.store.results",
    "load_spec": "foldrunner.config.spec",
    "Spec": "foldrunner.config.spec",
    "build_plan": "foldrunner.config.plan",
    "FoldContext": "foldrunner.child.context",
    "Status": "foldrunner.wire.outcome",
    "FoldrunnerError": "foldrunner.errors",
    "UsageError": "foldrunner.errors",
    "SpecError": "foldrunner.errors",
    "PreflightError": "foldrunner.errors",
    "RunDirError": "foldrunner.errors",
    "RunLockedError": "foldrunner.errors",
    "InterruptedRun": "foldrunner.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from foldrunner.orchestrate.api import RunOptions, run
    from foldrunner.child.context import FoldContext
    from foldrunner.errors import (
        FoldrunnerError, InterruptedRun, PreflightError, RunDirError, RunLockedError,
        SpecError, UsageError,
    )
    from foldrunner.wire.outcome import Status
    from foldrunner.config.plan import build_plan
    from foldrunner.store.results import load_results, summarize
    from foldrunner.store.reports import load_reports
    from foldrunner.config.spec import Spec, load_spec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'foldrunner' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
