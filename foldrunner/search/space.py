"""``random.space``'s grammar as Optuna's suggestions.

``loguniform`` and ``uniform`` become ``suggest_float`` (with ``log``), ``randint``
``suggest_int`` (both ends inclusive, as in random search), ``choice``
``suggest_categorical``. Optuna's choices must be None, booleans, numbers or strings: a
``choice`` with lists or mappings among its values is suggested as their JSON texts and
read back (:func:`decode`), so the fold sees the value written in the spec.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

_PRIMITIVE = (type(None), bool, int, float, str)


def _as_text(choices: list[Any]) -> bool:
    return any(not isinstance(c, _PRIMITIVE) for c in choices)


def suggest(trial: optuna.trial.Trial, space: Mapping[str, Mapping[str, list[Any]]]) -> dict[str, Any]:
    """Every parameter of ``space`` suggested by ``trial`` (those it has already keep their
    values), as the fold will see them."""
    out: dict[str, Any] = {}
    for name, dist in space.items():
        ((kind, args),) = dist.items()
        if kind == "loguniform":
            out[name] = trial.suggest_float(name, float(args[0]), float(args[1]), log=True)
        elif kind == "uniform":
            out[name] = trial.suggest_float(name, float(args[0]), float(args[1]))
        elif kind == "randint":
            out[name] = trial.suggest_int(name, int(args[0]), int(args[1]))
        elif kind == "choice":
            if _as_text(args):
                out[name] = json.loads(str(trial.suggest_categorical(name, [json.dumps(c) for c in args])))
            else:
                out[name] = trial.suggest_categorical(name, list(args))
        else:  # the spec allows no other kind
            raise ValueError(f"unknown distribution {kind!r}")
    return out


def complete(params: Mapping[str, Any], space: Mapping[str, Mapping[str, list[Any]]]) -> bool:
    """Whether ``params`` (a study's trial's) has a value for every parameter of ``space``."""
    return all(name in params for name in space)
