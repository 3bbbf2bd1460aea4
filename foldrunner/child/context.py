"""The child's view of its fold: :class:`FoldContext`, handed to the entry point.

Imported in every fold's process: keep it free of heavy imports (scikit-learn is
imported only by :meth:`FoldContext.split`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foldrunner.wire.messages import FoldMessage, Plain, Report

SPLIT_KINDS = ("kfold", "stratified", "group")

REPORT_TEXT_LIMIT = 200
"""``ctx.report`` values that are text (or become text) keep at most this many characters."""


@dataclass
class FoldContext:
    """Everything a fold needs to know about itself.

    ``seed`` is the split seed of this replicate: the same for every trial, so that
    all trials see the same splits. ``gpu`` is the physical GPU index the fold is
    pinned to (``CUDA_VISIBLE_DEVICES`` is set to it), or ``None``.
    """

    params: dict[str, Any]
    trial: int
    fold: int
    folds: int
    replicate: int
    seed: int
    attempt: int
    gpu: int | None
    run_dir: Path
    fold_id: str
    log_path: Path
    _send: Callable[[FoldMessage], None] | None = field(default=None, repr=False)

    def report(self, **metrics: Any) -> None:
        """Send intermediate metrics (a heartbeat) to the orchestrator.

        The latest report of each running fold is shown by ``foldrunner status`` and
        the live view. Values should be numbers or strings; whatever they are, they are
        turned into plain ones here, in the fold (see :func:`report_value`): numpy scalars,
        0-d arrays and tensors become numbers, anything else its text.
        """
        clean = {str(k): report_value(v) for k, v in metrics.items()}
        if self._send is not None:
            self._send(Report(clean, time.time()))

    def split(
        self,
        X: Any,
        y: Any = None,
        groups: Any = None,
        kind: str = "kfold",
        shuffle: bool = True,
    ) -> tuple[Any, Any]:
        """This fold's ``(train_indices, validation_indices)``, by scikit-learn's splitters.

        ``kind`` is ``kfold`` (``KFold``), ``stratified`` (``StratifiedKFold``, needs
        ``y``) or ``group`` (``GroupKFold``, needs ``groups``). The splits are seeded by
        the replicate's seed, so every trial sees the same ones.
        """
        if kind not in SPLIT_KINDS:
            raise ValueError(f"ctx.split: kind must be one of {', '.join(SPLIT_KINDS)}; got {kind!r}")
        try:
            from sklearn import model_selection as ms
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "ctx.split needs scikit-learn: pip install scikit-learn"
            ) from exc
        n = len(X)
        if self.folds < 2:
            raise ValueError(f"ctx.split needs cv.folds >= 2; this spec has cv.folds = {self.folds}")
        if n < self.folds:
            raise ValueError(f"ctx.split: {n} samples cannot give {self.folds} folds")
        splitter: Any
        if kind == "kfold":
            splitter = ms.KFold(self.folds, shuffle=shuffle, random_state=self.seed if shuffle else None)
        elif kind == "stratified":
            if y is None:
                raise ValueError("ctx.split(kind='stratified') needs y")
            splitter = ms.StratifiedKFold(
                self.folds, shuffle=shuffle, random_state=self.seed if shuffle else None
            )
        else:
            if groups is None:
                raise ValueError("ctx.split(kind='group') needs groups")
            if len(set(groups)) < self.folds:
                raise ValueError(
                    f"ctx.split: {len(set(groups))} distinct groups cannot give {self.folds} folds"
                )
            splitter = ms.GroupKFold(self.folds)
            if shuffle and "shuffle" in ms.GroupKFold.__init__.__code__.co_varnames:
                splitter = ms.GroupKFold(self.folds, shuffle=True, random_state=self.seed)
        for i, (train, val) in enumerate(splitter.split(X, y, groups)):
            if i == self.fold:
                return train, val
        raise ValueError(f"ctx.split: fold {self.fold} out of range")  # pragma: no cover


def _plain(v: Any) -> Any:
    """numpy scalars and 0-d arrays to Python numbers; anything else unchanged."""
    item = getattr(v, "item", None)
    if item is not None and getattr(v, "shape", None) == ():
        try:
            return item()
        except (TypeError, ValueError):
            return v
    return v


def report_value(v: Any) -> Plain:
    """One ``ctx.report`` value as a plain ``int``, ``float``, ``str``, ``bool`` or None.

    Numbers, text, bools and None stay (subclasses become their plain type); numpy
    scalars and 0-d arrays, torch 0-d tensors (``.item()``) and TensorFlow 0-d tensors
    (``.numpy()``) become their number; anything with ``__float__`` (``Decimal``,
    ``Fraction``) becomes a float; anything else becomes its ``str()``. Text keeps at
    most :data:`REPORT_TEXT_LIMIT` characters. Never raises.
    """
    for _ in range(3):  # a tensor's .numpy() is a numpy scalar, whose .item() is a number
        if v is None or type(v) in (int, float, bool):
            return v  # type: ignore[no-any-return]
        if isinstance(v, bool):
            return bool(v)
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            return float(v)
        if isinstance(v, str):
            return str.__str__(v)[:REPORT_TEXT_LIMIT]
        try:
            if _is_0d(v):
                get = getattr(v, "item", None) or getattr(v, "numpy", None)
                if callable(get):
                    v = get()
                    continue
            if hasattr(type(v), "__float__") and not isinstance(v, complex):
                return float(v)
        except Exception:  # noqa: BLE001 - then it is shown as text
            pass
        break
    try:
        text = str(v)
        if type(text) is not str:
            text = str.__str__(text)
    except Exception:  # noqa: BLE001 - even its text fails: name its type
        text = f"<unprintable {type(v).__name__}>"
    return text[:REPORT_TEXT_LIMIT]


def _is_0d(v: Any) -> bool:
    """``v.shape == ()``: a numpy scalar or 0-d array, a 0-d tensor."""
    try:
        shape = v.shape
        return bool(shape == ()) and len(shape) == 0
    except Exception:  # noqa: BLE001 - no shape, or an odd one
        return False


def check_metrics(result: Any) -> dict[str, Any]:
    """Validate an entry point's return value: a mapping of name to number or string."""
    if not isinstance(result, Mapping):
        raise TypeError(
            f"the entry point returned {type(result).__name__}; "
            "it must return a mapping of metric name to number or string"
        )
    out: dict[str, Any] = {}
    for k, v in result.items():
        if not isinstance(k, str) or not k:
            raise TypeError(f"metric name {k!r} is not a non-empty string")
        v = _plain(v)
        if v is not None and not isinstance(v, (int, float, str, bool)):
            raise TypeError(
                f"metric {k!r} is a {type(v).__name__}; metrics must be numbers or strings"
            )
        out[k] = v
    return out
