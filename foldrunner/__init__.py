"""foldrunner: run every cross-validation fold in a fresh process.

The public API: :func:`run`, :func:`load_results`, :class:`FoldContext`, the exceptions.
Attributes are imported lazily, so that a fold's process (which imports
``foldrunner.child``) does not pay for pandas, pydantic or YAML.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "run": "foldrunner.api",
    "RunOptions": "foldrunner.api",
    "load_results": "foldrunner.results",
    "summarize": "foldrunner.results",
    "load_spec": "foldrunner.spec",
    "Spec": "foldrunner.spec",
    "build_plan": "foldrunner.plan",
    "FoldContext": "foldrunner.context",
    "Status": "foldrunner.outcome",
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
    from .api import RunOptions, run
    from .context import FoldContext
    from .errors import (
        FoldrunnerError, InterruptedRun, PreflightError, RunDirError, RunLockedError,
        SpecError, UsageError,
    )
    from .outcome import Status
    from .plan import build_plan
    from .results import load_results, summarize
    from .spec import Spec, load_spec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'foldrunner' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
