"""The fold spec: YAML -> a validated, typed :class:`Spec` (CONTRACT.md section 1).

:func:`load_spec` reads a YAML file (or takes a mapping or a :class:`Spec`), applies
``-o KEY=VALUE`` overrides and validates. Every problem is collected into ONE
:class:`~foldrunner.errors.SpecError`, one line each, naming the key path and, for files,
the line: ``limits.timeout (line 12): invalid duration '5 minutes': use e.g. 90, 90s, ...``.
The YAML loader is strict (:mod:`foldrunner.config.yamlload`): YAML 1.2 core scalars (``yes``,
``no``, ``on``, ``off`` stay strings), no duplicate keys, limits on size, aliases, nodes and
depth. The types of the values and their validators are in :mod:`foldrunner.config.fields`,
durations and sizes in :mod:`foldrunner.config.units`; the defaults of ``limits``, ``retry``
and ``resources`` come from :class:`foldrunner.defaults.Defaults`.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, StrictBool,
                      StrictInt, StrictStr, ValidationError, model_validator)

from foldrunner.config.fields import (Backend, Count, CpusPerFold, Duration, DurationOrZero, EntryPoint, EnvName,
                                      EnvValue, Gpus, Grid, Invalid, ModuleName, OutputDir, ParamName, Percent,
                                      Probability, RayAddress, RayNamespace, RetryOn, RunName, Seed, Size,
                                      SizeOrZero, Space, Workdir, got)
from foldrunner.config.yamlload import (UNREADABLE, Loc, dump_yaml, format_problem, parse_yaml,
                                        read_spec_file, show_value)
from foldrunner.defaults import Defaults
from foldrunner.errors import SpecError


# ---------------------------------------------------------------- the models
class _Section(BaseModel):
    """Base of the spec's models: unknown keys are refused, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RandomSearch(_Section):
    """``samples`` trials, each drawn from ``space`` (name -> a distribution,
    :data:`~foldrunner.config.fields.Dist`)."""

    samples: Annotated[StrictInt, Field(ge=1, le=1_000_000)]
    seed: Seed = 0
    space: Space


class MedianPruner(_Section):
    """Fold-aware median pruning: a trial whose running mean over its first k folds is
    worse than the median of every other trial's mean over the same k folds is pruned."""

    warmup_folds: Annotated[StrictInt, Field(ge=0, le=100_000)] = 0
    """Folds (in launch order) a trial runs before it may be pruned (0: after its first
    fold; the comparison is with the same fold of the others, so it is a fair one)."""
    min_trials: Annotated[StrictInt, Field(ge=1, le=1_000_000)] = 5
    """Other trials that must have reached the same fold before any comparison."""


class PercentilePruner(MedianPruner):
    """Fold-aware percentile pruning: as ``median``, but a trial goes on only while its
    running mean is among the best ``percentile`` per cent of the others' over the same
    folds (Optuna's ``PercentilePruner`` meaning: 25 keeps the top quarter)."""

    percentile: Percent = 25.0
    """The per cent of trials kept at each fold, more than 0 and less than 100 (50 is the
    median pruner)."""


class WilcoxonPruner(_Section):
    """Optuna's ``WilcoxonPruner``: a trial's fold scores paired by fold with the best
    trial's, pruned when a one-sided signed-rank test says it is worse."""

    p_threshold: Probability = 0.1
    warmup_folds: Annotated[StrictInt, Field(ge=0, le=100_000)] = 2


PRUNER_NAMES = ("none", "median", "percentile", "wilcoxon")


class PrunerSpec(_Section):
    """Exactly one pruner; written ``median`` or ``{median: {warmup_folds: 1}}``."""

    median: Union[MedianPruner, None] = None
    percentile: Union[PercentilePruner, None] = None
    wilcoxon: Union[WilcoxonPruner, None] = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in PRUNER_NAMES[1:]:
                close = difflib.get_close_matches(value, PRUNER_NAMES, 1)
                guess = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown pruner {value!r}{guess}; expected one of"
                                 f" {', '.join(PRUNER_NAMES)}, or e.g. {{median: {{warmup_folds: 1}}}}")
            return {value: {}}
        if isinstance(value, dict):  # {median: null}: the defaults
            return {k: ({} if v is None and k in PRUNER_NAMES[1:] else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> PrunerSpec:
        if sum(p is not None for p in (self.median, self.percentile, self.wilcoxon)) != 1:
            raise ValueError("give exactly one pruner: none, median, percentile or wilcoxon")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in PRUNER_NAMES[1:] if getattr(self, k) is not None)

    @property
    def settings(self) -> MedianPruner | WilcoxonPruner:
        """The chosen pruner's section."""
        chosen = getattr(self, self.kind)
        assert isinstance(chosen, (MedianPruner, WilcoxonPruner))
        return chosen


def _pruner_or_none(value: Any) -> Any:
    return None if value == "none" else value


class OptunaSearch(_Section):
    """Adaptive search: ``trials`` trials, each asked of an Optuna study as a slot comes
    free; ``space`` has the grammar of ``random.space``."""

    trials: Annotated[StrictInt, Field(ge=1, le=1_000_000)]
    sampler: Literal["tpe", "random", "cmaes", "qmc"] = "tpe"
    seed: Seed = 0
    space: Space
    pruner: Annotated[Union[PrunerSpec, None], BeforeValidator(_pruner_or_none)] = Field(
        default_factory=lambda: PrunerSpec(median=MedianPruner()))
    concurrent_trials: Union[Annotated[StrictInt, Field(ge=1, le=100_000)], None] = None
    """Trials in flight at once (None: as many as keep the slots full)."""


class SearchSpec(_Section):
    """Exactly one of ``grid`` (cartesian product, in the order written), ``random`` or
    ``optuna`` (adaptive)."""

    grid: Union[Grid, None] = None
    random: Union[RandomSearch, None] = None
    optuna: Union[OptunaSearch, None] = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchSpec:
        if sum(x is not None for x in (self.grid, self.random, self.optuna)) != 1:
            raise ValueError("give exactly one of grid, random or optuna")
        return self


class CVSpec(_Section):
    """Folds (index 0 .. folds-1), replicates of the whole split, and the base split seed."""

    folds: Count = 5
    replicates: Count = 1
    seed: Seed = 0


class ObjectiveSpec(_Section):
    """The metric that ``results --summary`` ranks trials by."""

    metric: Annotated[StrictStr, Field(min_length=1)]
    mode: Literal["max", "min"] = "max"


class ResourcesSpec(_Section):
    """GPUs (``auto``, ``none`` or physical indices) and concurrency; memory in bytes."""

    gpus: Gpus = "auto"
    per_gpu: Annotated[StrictInt, Field(ge=1, le=1024)] = Defaults.PER_GPU
    workers: Union[Annotated[StrictInt, Field(ge=1, le=100_000)], None] = None
    min_free_memory: SizeOrZero = Defaults.MIN_FREE_MEMORY
    spares: StrictBool = True
    zygote: StrictBool = False


class LimitsSpec(_Section):
    """Limits of one attempt: durations in seconds, memory in bytes (None: no limit)."""

    timeout: Duration = Defaults.TIMEOUT
    grace: Duration = Defaults.GRACE
    max_rss: Union[Size, None] = None
    max_gpu_memory: Union[Size, None] = None
    exit_timeout: Duration = Defaults.EXIT_TIMEOUT
    stall: Union[Duration, None] = None


class RetrySpec(_Section):
    """Attempts per fold in all, the outcomes retried, and the base backoff in seconds."""

    attempts: Annotated[StrictInt, Field(ge=1, le=100)] = Defaults.ATTEMPTS
    on: RetryOn = Field(default_factory=lambda: list(Defaults.RETRY_ON))
    backoff: DurationOrZero = Defaults.BACKOFF


class OutputSpec(_Section):
    """Where the run directory goes; ``{name}`` is replaced by the spec's name."""

    dir: OutputDir = "runs/{name}"


class RaySpec(_Section):
    """The Ray cluster of ``backend: ray``: ``auto`` (``RAY_ADDRESS``, else the cluster that
    ``ray start --head`` started on this machine), ``HOST:PORT`` of a head node, or ``local``
    (a private Ray for the run); resolved by :mod:`foldrunner.orchestrate.backend`."""

    address: RayAddress = "auto"
    namespace: RayNamespace = "foldrunner"
    cpus_per_fold: CpusPerFold = 1.0
    """CPUs each fold's Ray task asks for (Ray places it where they are free)."""


class Spec(_Section):
    """A validated fold spec; build it with :func:`load_spec`. ``workdir`` is absolute."""

    name: RunName
    entrypoint: EntryPoint
    workdir: Workdir = Field(default=Path("."), validate_default=True)
    preload: list[ModuleName] = Field(default_factory=list)
    params: dict[ParamName, Any] = Field(default_factory=dict)
    search: Union[SearchSpec, None] = None
    cv: CVSpec = Field(default_factory=CVSpec)
    objective: Union[ObjectiveSpec, None] = None
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    output: OutputSpec = Field(default_factory=OutputSpec)
    backend: Backend = "local"
    ray: RaySpec = Field(default_factory=RaySpec)
    _source: Union[Path, None] = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _optuna_needs_an_objective(self) -> Spec:
        if self.search is not None and self.search.optuna is not None and self.objective is None:
            raise Invalid([(("objective",), "required with search.optuna: the metric the study"
                            " optimizes, e.g. {metric: val_accuracy, mode: max}")])
        return self

    @model_validator(mode="after")
    def _gpus_fit_the_backend(self) -> Spec:
        gpus = self.resources.gpus
        if self.backend == "ray" and isinstance(gpus, list):
            raise Invalid([(("resources", "gpus"), f"an explicit list of GPUs ({gpus}) cannot be"
                            " used with backend: ray, where Ray assigns each fold its GPU on its"
                            " node: write auto (the GPUs Ray assigns) or none")])
        return self

    @property
    def source(self) -> Path | None:
        """The file this spec was read from (None for a mapping); not part of equality."""
        return self._source

    def __eq__(self, other: object) -> bool:
        return self.__dict__ == other.__dict__ if isinstance(other, Spec) else NotImplemented

    def run_dir(self) -> Path:
        """``output.dir`` with ``{name}`` filled in (a relative path stays relative)."""
        return Path(self.output.dir.replace("{name}", self.name))

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain YAML-safe data; ``load_spec(s.to_dict()) == s``."""
        data = self.model_dump(mode="python")
        if data["search"] is not None:
            data["search"] = {k: v for k, v in data["search"].items() if v is not None}
            optuna = data["search"].get("optuna")
            if optuna is not None:
                pruner = optuna["pruner"]
                optuna["pruner"] = "none" if pruner is None else {
                    k: v for k, v in pruner.items() if v is not None}
        return data

    def to_yaml(self) -> str:
        """:meth:`to_dict` as YAML that :func:`load_spec` reads back to an equal Spec."""
        return dump_yaml(self.to_dict())


_SECTIONS: dict[Loc, type[BaseModel]] = {
    (): Spec, ("search",): SearchSpec, ("search", "random"): RandomSearch,
    ("search", "optuna"): OptunaSearch, ("search", "optuna", "pruner"): PrunerSpec,
    ("search", "optuna", "pruner", "median"): MedianPruner,
    ("search", "optuna", "pruner", "percentile"): PercentilePruner,
    ("search", "optuna", "pruner", "wilcoxon"): WilcoxonPruner, ("cv",): CVSpec,
    ("objective",): ObjectiveSpec, ("resources",): ResourcesSpec, ("limits",): LimitsSpec,
    ("retry",): RetrySpec, ("output",): OutputSpec, ("ray",): RaySpec}


# ---------------------------------------------------------------- problems and overrides
_EXPECTED = {"int_type": "an integer", "string_type": "a string", "bool_type": "true or false",
             "float_type": "a number", "list_type": "a list", "dict_type": "a mapping",
             "model_type": "a mapping", "model_attributes_type": "a mapping"}
_BOUNDS = {"greater_than_equal": ("at least", "ge", ""), "less_than_equal": ("at most", "le", ""),
           "greater_than": ("more than", "gt", ""), "less_than": ("less than", "lt", ""),
           "string_too_long": ("at most", "max_length", " characters"),
           "string_too_short": ("at least", "min_length", " characters")}


def _messages(error: Any, loc: Loc) -> list[tuple[Loc, str]]:
    """Readable (sub-location, message) pairs for one pydantic error."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if isinstance(ctx.get("error"), Invalid):
        return list(ctx["error"].items)
    if isinstance(ctx.get("error"), Exception):
        return [((), str(ctx["error"]))]
    if kind == "extra_forbidden" and loc[:-1] in _SECTIONS:
        keys = list(_SECTIONS[loc[:-1]].model_fields)
        close = difflib.get_close_matches(str(loc[-1]), keys, 1, 0.7)
        return [((), f"unknown key; did you mean {close[0]!r}?" if close
                 else f"unknown key; expected one of: {', '.join(keys)}")]
    if kind == "missing":
        return [((), "required key is missing")]
    if kind == "invalid_key":
        hint = " (read by a YAML 1.1 loader, which turns on/yes/no into booleans?)" if isinstance(
            value, bool) else ""
        return [((), f"key {show_value(value)} is not a string{hint}")]
    if kind in _EXPECTED:
        return [((), f"expected {_EXPECTED[kind]}, got {got(value)}")]
    if kind in _BOUNDS:
        words, key, unit = _BOUNDS[kind]
        return [((), f"must be {words} {ctx.get(key)}{unit}, got {show_value(value)}")]
    if kind == "literal_error":
        return [((), f"expected {ctx.get('expected')}, got {got(value)}")]
    return [((), str(error["msg"]).removeprefix("Value error, "))]


def _apply_overrides(raw: dict[str, Any], overrides: Sequence[str] | Mapping[str, Any],
                     problems: list[str]) -> list[tuple[Loc, str]]:
    """Set each override into ``raw``; return (the path it owns, its label) for each."""
    items: list[tuple[str, Any, str]] = []
    if isinstance(overrides, Mapping):
        items = [(str(k), copy.deepcopy(v), f"override {k}={v!r}") for k, v in overrides.items()]
    else:
        for text in [overrides] if isinstance(overrides, str) else overrides:
            key, sep, value_text = str(text).partition("=")
            value, _, value_problems = parse_yaml(value_text)  # the same strict YAML as files
            if not sep or "" in key.strip().split("."):
                problems.append(f"override {text!r}: expected KEY=VALUE, e.g. limits.timeout=10m")
            else:
                problems += [f"override {text!r}: {p}" for p in value_problems]
                items += [] if value_problems else [(key.strip(), value, f"-o {text}")]
    applied: list[tuple[Loc, str]] = []
    for key, value, label in items:
        parts, node, owned = key.split("."), raw, None
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:  # create missing (or null) sections
                node[part], owned = {}, owned or tuple(parts[: i + 1])
            if not isinstance(node[part], dict):
                problems.append(f"{label}: {'.'.join(parts[: i + 1])} is not a mapping")
                break
            node = node[part]
        else:
            node[parts[-1]] = value
            applied.append((owned or tuple(parts), label))
    return applied


def _problems(exc: ValidationError, lines: dict[Loc, int], applied: list[tuple[Loc, str]]) -> list[str]:
    """One line per problem, located by the override that caused it or by its YAML line."""
    out = []
    for error in exc.errors(include_url=False):
        if error.get("input") is UNREADABLE:
            continue
        loc, on_key = tuple(error["loc"]), error["loc"][-1:] == ("[key]",)
        loc = loc[:-1] if on_key else loc  # pydantic's marker of an error in a dict's key
        if error["type"] == "invalid_key" or (on_key and error["type"] == "string_type"):
            error, loc = {**error, "type": "invalid_key"}, loc[:-1]  # report at the mapping
        for sub, message in _messages(error, loc):
            full = loc + sub
            via = next((f"from {label}" for owned, label in reversed(applied)
                        if full and owned[:len(full)] == full[:len(owned)]), None)
            line = next((lines[full[:i]] for i in range(len(full), 0, -1) if full[:i] in lines), None)
            out.append(format_problem(full, via or (f"line {line}" if line else None), message))
    return out


def load_spec(source: str | os.PathLike[str] | Mapping[str, Any] | Spec,
              overrides: Sequence[str] | Mapping[str, Any] = (), *,
              base_dir: Path | None = None) -> Spec:
    """Load and validate a fold spec.

    ``source`` is a YAML file, an already parsed mapping, or a :class:`Spec` (returned as is
    when there are no overrides). ``overrides`` are ``"limits.timeout=10m"`` strings (the
    value read as YAML) or a mapping of dotted key to value. A relative ``workdir`` resolves
    against ``base_dir``, else the spec file's directory, else the current directory. An
    empty (null) section means its defaults. Raises :class:`SpecError` listing every problem.
    """
    origin: Path | None = None
    lines: dict[Loc, int] = {}
    problems: list[str] = []
    if isinstance(source, Spec):
        if not overrides:
            return source
        raw, origin = source.to_dict(), source.source
    elif isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))
    elif isinstance(source, (str, os.PathLike)):
        origin = Path(source).expanduser()
        raw, lines, problems = read_spec_file(origin)
        base_dir = base_dir or origin.absolute().parent
    else:
        raise TypeError(f"load_spec() takes a path, a mapping or a Spec, not {type(source).__name__}")
    label = str(origin) if origin else None
    if not isinstance(raw, dict):
        empty = "the spec is empty: expected a mapping with at least name and entrypoint"
        wrong = f"the spec must be a mapping of keys such as name and entrypoint; got {got(raw)}"
        raise SpecError(problems or [empty if raw is None else format_problem((), "line 1", wrong)],
                        label)
    applied = _apply_overrides(raw, overrides, problems)
    for section in ("preload", "params", "cv", "resources", "limits", "retry", "env", "output", "ray"):
        if section in raw and raw[section] is None:
            del raw[section]  # a section left empty (all commented out) means its defaults
    try:
        spec = Spec.model_validate(raw, context={"base_dir": base_dir or Path.cwd()})
    except ValidationError as exc:
        problems += _problems(exc, lines, applied)
    if problems:
        raise SpecError(problems, label)
    spec._source = origin.absolute() if origin else None
    return spec
