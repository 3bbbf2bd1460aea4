"""Spec -> folds: the grid or random trials, times replicates, times folds.

Every fold has a stable id ``t<trial>-r<replicate>-f<fold>``; the split seed of a
replicate is ``cv.seed + replicate`` (modulo 2**32) and is the same for every trial, so
that all trials see the same splits. The plan hash identifies the work a run directory holds:
``--resume`` refuses a spec whose plan hash differs from the journal's.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from foldrunner.config.spec import Spec

#: split seeds wrap around into ``[0, 2**32)``, the range numpy and scikit-learn accept
SEED_SPACE = 2**32


@dataclass(frozen=True)
class Fold:
    """One unit of work: one fold of one replicate of one trial."""

    index: int
    trial: int
    replicate: int
    fold: int
    folds: int
    seed: int
    params: Mapping[str, Any] = field(hash=False)

    @property
    def fold_id(self) -> str:
        return fold_id(self.trial, self.replicate, self.fold)


def fold_id(trial: int, replicate: int, fold: int) -> str:
    """The id of a fold: ``t<trial>-r<replicate>-f<fold>``."""
    return f"t{trial}-r{replicate}-f{fold}"


@dataclass(frozen=True)
class Adaptive:
    """An adaptive (``search.optuna``) search: at most ``trials`` trials, each asked of the
    study as a slot comes free, so its folds are made one trial at a time (:meth:`folds_of`)."""

    trials: int
    replicates: int
    folds: int
    cv_seed: int
    base: Mapping[str, Any] = field(hash=False)
    """The fixed ``params`` every trial's parameters are merged into."""

    @property
    def per_trial(self) -> int:
        return self.replicates * self.folds

    @property
    def max_folds(self) -> int:
        return self.trials * self.per_trial

    def folds_of(self, trial: int, params: Mapping[str, Any]) -> list[Fold]:
        """Every fold of ``trial`` in launch order (replicate-major, then fold order); its
        index is its place in the trial-major order of all trials."""
        merged = {**self.base, **params}
        return [Fold(trial * self.per_trial + r * self.folds + k, trial, r, k, self.folds,
                     (self.cv_seed + r) % SEED_SPACE, merged)
                for r in range(self.replicates) for k in range(self.folds)]


@dataclass(frozen=True)
class Plan:
    """The expanded spec: its trials (parameter sets) and its folds in run order. An
    adaptive search has neither up front: ``adaptive`` says how its folds are made."""

    trials: tuple[Mapping[str, Any], ...]
    folds: tuple[Fold, ...]
    hash: str
    adaptive: Adaptive | None = None

    @property
    def param_names(self) -> list[str]:
        names: dict[str, None] = {}
        for t in self.trials:
            names.update(dict.fromkeys(t))
        return list(names)

    def by_id(self) -> dict[str, Fold]:
        return {f.fold_id: f for f in self.folds}


def _sample(rng: random.Random, dist: Mapping[str, Any]) -> Any:
    """Draw one value from a one-key distribution mapping (validated by the spec)."""
    ((kind, args),) = dist.items()
    if kind == "choice":
        return args[rng.randrange(len(args))]
    if kind == "uniform":
        return rng.uniform(float(args[0]), float(args[1]))
    if kind == "loguniform":
        return math.exp(rng.uniform(math.log(float(args[0])), math.log(float(args[1]))))
    if kind == "randint":
        return rng.randint(int(args[0]), int(args[1]))  # both ends inclusive
    raise ValueError(f"unknown distribution {kind!r}")  # the spec forbids this


def trials_of(spec: Spec) -> list[dict[str, Any]]:
    """The parameter set of every trial: fixed params merged with the search's (none up
    front for an adaptive search)."""
    base = dict(spec.params)
    search = spec.search
    if search is None:
        return [base]
    if search.optuna is not None:
        return []
    if search.grid is not None:
        keys = list(search.grid)
        return [
            {**base, **dict(zip(keys, values))}
            for values in itertools.product(*(search.grid[k] for k in keys))
        ]
    rnd = search.random
    assert rnd is not None
    rng = random.Random(rnd.seed)
    return [
        {**base, **{k: _sample(rng, _dist_mapping(d)) for k, d in rnd.space.items()}}
        for _ in range(rnd.samples)
    ]


def _dist_mapping(dist: Any) -> Mapping[str, Any]:
    if isinstance(dist, Mapping):
        return dist
    dumped = dist.model_dump(exclude_none=True) if hasattr(dist, "model_dump") else dist
    return dict(dumped)


def build_plan(spec: Spec) -> Plan:
    """Expand a spec into its plan (trials x replicates x folds, trial-major); an adaptive
    search's plan has no folds up front (see :class:`Adaptive`)."""
    cv = spec.cv
    if spec.search is not None and spec.search.optuna is not None:
        return _adaptive_plan(spec)
    trials = trials_of(spec)
    folds: list[Fold] = []
    for t, params in enumerate(trials):
        for r in range(cv.replicates):
            for k in range(cv.folds):
                seed = (cv.seed + r) % SEED_SPACE
                folds.append(Fold(len(folds), t, r, k, cv.folds, seed, params))
    return Plan(tuple(trials), tuple(folds), plan_hash(folds))


def plan_hash(folds: list[Fold] | tuple[Fold, ...]) -> str:
    """A short sha256 of the folds: ids, seeds and parameters."""
    doc = [[f.fold_id, f.folds, f.seed, dict(f.params)] for f in folds]
    text = json.dumps(doc, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _adaptive_plan(spec: Spec) -> Plan:
    """The plan of a ``search.optuna`` spec. Its hash covers what makes the study's trials
    comparable (the space, sampler, seed, pruner, the fixed params, the folds and their
    seeds, the objective), not ``trials``: a resume may raise the budget."""
    opt = spec.search.optuna if spec.search is not None else None
    assert opt is not None
    data = spec.to_dict()
    search = {k: v for k, v in data["search"]["optuna"].items() if k not in ("trials", "concurrent_trials")}
    doc = {"optuna": search, "params": data["params"], "cv": data["cv"], "objective": data["objective"]}
    text = json.dumps(doc, sort_keys=True, default=repr, separators=(",", ":"))
    adaptive = Adaptive(opt.trials, spec.cv.replicates, spec.cv.folds, spec.cv.seed, dict(spec.params))
    return Plan((), (), "a" + hashlib.sha256(text.encode()).hexdigest()[:15], adaptive)
