"""The Keras integration. TensorFlow/Keras are imported only when these are called.

    from foldrunner import keras as fk

    def train_fold(ctx):
        fk.set_seed(ctx)
        model = build(ctx.params)
        model.fit(X[train], y[train], epochs=ctx.params["epochs"],
                  validation_data=(X[val], y[val]), callbacks=[fk.ReportCallback(ctx)])
        ...

``ReportCallback`` sends each epoch's logs through ``ctx.report(...)``: the live view,
``foldrunner status`` and ``limits.stall`` see them. A ``ResourceExhaustedError`` raised
by TensorFlow in a fold is recorded as ``memory`` (the child recognises it by name).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from foldrunner.child.context import FoldContext

__all__ = ["ReportCallback", "cleanup", "fold_seed", "fold_session", "set_seed"]


def fold_seed(ctx: FoldContext) -> int:
    """The seed of a fold's model: the replicate's seed and the fold index, the same for
    every trial (so trials are compared on equal initialisations)."""
    return (ctx.seed * 1009 + ctx.fold) % (2**32)


def set_seed(ctx: FoldContext) -> int:
    """Seed Python, NumPy and the backend with :func:`fold_seed`; return the seed."""
    import keras

    seed = fold_seed(ctx)
    keras.utils.set_random_seed(seed)
    return seed


def _plain(logs: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (logs or {}).items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        out[k] = f if math.isfinite(f) else str(f)
    return out


def ReportCallback(ctx: FoldContext, every: int = 1) -> Any:  # noqa: N802 - reads as a class
    """A ``keras.callbacks.Callback`` that reports every ``every``-th epoch's logs."""
    import keras

    class _Report(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if (epoch + 1) % every == 0:
                ctx.report(epoch=epoch + 1, **_plain(logs))

    return _Report()


def cleanup() -> None:
    """``clear_session()`` and ``gc.collect()``: lets TensorFlow's teardown at exit be quick."""
    import keras

    keras.backend.clear_session()
    gc.collect()


@contextmanager
def fold_session(ctx: FoldContext) -> Iterator[Any]:
    """Seed the fold, yield its :func:`ReportCallback`, clean up when the fold is done."""
    set_seed(ctx)
    try:
        yield ReportCallback(ctx)
    finally:
        cleanup()
