"""The fold spec: YAML -> a validated, typed :class:`Spec` (CONTRACT.md section 1).

:func:`load_spec` reads a YAML file (or takes a mapping or a :class:`Spec`), applies
``-o KEY=VALUE`` overrides and validates. Every problem is collected into ONE
:class:`~foldrunner.errors.SpecError`, one line each, naming the key path and, for files,
the line: ``limits.timeout (line 12): invalid duration '5 minutes': use e.g. 90, 90s, ...``.
The YAML loader is strict (:mod:`foldrunner.config.yamlload`): YAML 1.2 core scalars (``yes``,
``no``, ``on``, ``off`` stay strings), no duplicate keys, limits on size, aliases, nodes and
depth. Its names used to live here and are still importable from this module.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer,
                      PlainValidator, PrivateAttr, StrictBool, StrictInt, StrictStr,
                      ValidationError, ValidationInfo, model_validator)

from foldrunner.errors import SpecError
from foldrunner.wire.outcome import RETRYABLE
from foldrunner.config.yamlload import (UNREADABLE as _UNREADABLE, Loc as Loc, dump_yaml,
                                 format_problem as _fmt, parse_yaml as _parse_yaml,
                                 read_spec_file as _read_spec_file, show_value as _show)

# The loader lived in this module before foldrunner.config.yamlload: its names stay importable here.
from foldrunner.config.yamlload import (MAX_ALIASES as MAX_ALIASES, MAX_DEPTH as MAX_DEPTH,  # noqa: F401
                                 MAX_NODES as MAX_NODES, MAX_SPEC_BYTES as MAX_SPEC_BYTES,
                                 _RESOLVERS as _RESOLVERS, _construct_int as _construct_int,
                                 _Walker as _Walker, Dumper as _Dumper,
                                 LimitExceeded as _LimitExceeded, StrictLoader as _StrictLoader)

#: the outcomes that ``retry.on`` may name
RETRYABLE_STATUSES: tuple[str, ...] = tuple(s.value for s in RETRYABLE)

Dist = dict[str, list[Any]]  # one random-search dimension, e.g. {"uniform": [0.0, 0.5]}
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = rf"{_IDENT}(?:\.{_IDENT})*"


class _Invalid(ValueError):
    """Raised by a validator to report problems below its own location (list items)."""

    def __init__(self, items: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(message for _, message in items))
        self.items = items


def _got(value: object) -> str:
    """:func:`_show` plus the value's kind, with a hint for YAML 1.1 booleans."""
    kind = {bool: "a boolean", str: "a string", int: "an integer", float: "a number"}.get(type(value))
    text = f"{_show(value)} ({kind})" if kind else _show(value)
    if isinstance(value, str) and value.lower() in ("yes", "no", "on", "off", "y", "n"):
        text += f"; `{value}` is not a boolean in this YAML: write true or false"
    return text


# ---------------------------------------------------------------- durations and sizes
_DURATION_HINT = "use e.g. 90, 90s, 15m, 2h, 1h30m"
_NUMBER = re.compile(r"\+?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|d|h|m|s)(?![a-z])\s*", re.I)
_DURATION_UNITS = {"d": Decimal(86400), "h": Decimal(3600), "m": Decimal(60), "s": Decimal(1),
                   "ms": Decimal("0.001")}


def parse_duration(value: object, *, allow_zero: bool = False) -> float:
    """Seconds from ``90``, ``1.5``, ``"90s"``, ``"15m"``, ``"2h"``, ``"1h30m"``, ``"1d"``,
    ``"250ms"`` (units largest first, each once). Raises ValueError for a bool, a negative,
    zero (unless ``allow_zero``), an empty string or garbage, with the accepted forms."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"invalid duration {_show(value)}: {_DURATION_HINT}")
    if not isinstance(value, str) or _NUMBER.fullmatch(value.strip()):
        seconds = float(value)
    else:
        text, pos, rank, total, units = value.strip(), 0, -1, Decimal(0), list(_DURATION_UNITS)
        while pos < len(text) or not text:
            match = _DURATION_PART.match(text, pos) if text else None
            if not match or units.index(match.group(2).lower()) <= rank:
                why = "give units largest first, each once; " if match else ""
                raise ValueError(f"invalid duration {value!r}: {why}{_DURATION_HINT}")
            rank, pos = units.index(match.group(2).lower()), match.end()
            total += Decimal(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
        seconds = float(total)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = "0 or more" if allow_zero else "more than 0"
        raise ValueError(f"invalid duration {_show(value)}: must be {bound} ({_DURATION_HINT})")
    return seconds


def format_duration(seconds: float) -> str:
    """The inverse of :func:`parse_duration`: ``1800 -> "30m"``, ``5400 -> "1h30m"``,
    ``1.5 -> "1.5s"``; ``parse_duration(format_duration(x)) == x`` for every x >= 0."""
    if isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration")
    if seconds != int(seconds):
        text = repr(float(seconds))
        return text if "e" in text else f"{text}s"
    rest, parts = int(seconds), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        parts += [f"{count}{unit}"] if count else []
    return "".join(parts) or "0s"


_SIZE_HINT = "use e.g. 1073741824 (bytes), 512MiB, 2GiB, 1.5GB"
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(value: object, *, allow_zero: bool = False) -> int:
    """Bytes from an int or a string such as ``"512MiB"``, ``"2GiB"``, ``"1.5GB"``, ``"4KiB"``,
    ``"1TB"`` (units in any case). A bare ``K/M/G/T`` is refused as ambiguous (1024- or
    1000-based?). Raises ValueError with the accepted forms."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"invalid size {_show(value)}: {_SIZE_HINT}")
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        unit = match.group(2).lower() if match else ""
        if match and unit in ("k", "m", "g", "t"):
            num, u = match.group(1), unit.upper()
            raise ValueError(f"invalid size {value!r}: '{match.group(2)}' is ambiguous;"
                             f" write {num}{u}iB (1024-based) or {num}{u}B (1000-based)")
        if not match or unit not in _SIZE_UNITS:
            raise ValueError(f"invalid size {value!r}: {_SIZE_HINT}")
        amount = Decimal(match.group(1)) * _SIZE_UNITS[unit]
    else:
        amount = Decimal(value)
    if amount != amount.to_integral_value():
        raise ValueError(f"invalid size {_show(value)}: not a whole number of bytes")
    if amount < 0 or (amount == 0 and not allow_zero):
        bound = "0 or more" if allow_zero else "more than 0"
        raise ValueError(f"invalid size {_show(value)}: must be {bound} bytes")
    return int(amount)


# ---------------------------------------------------------------- field validators
def _matching(pattern: str, what: str, hint: str) -> AfterValidator:
    """A validator that checks a whole string against ``pattern``."""
    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise ValueError(f"invalid {what} {value!r}: {hint}")
        return value
    return AfterValidator(check)


def _non_empty(message: str) -> AfterValidator:
    """A validator that refuses an empty collection with ``message``."""
    def check(value: Any) -> Any:
        if not value:
            raise ValueError(message)
        return value
    return AfterValidator(check)


def _parse_env_value(value: object) -> str:
    """An environment value: a string, or a number written as one; booleans are ambiguous."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    hint = " (ambiguous: quote it, e.g. \"1\" or \"true\")" if isinstance(value, bool) else ""
    raise ValueError(f"expected a string or a number, got {_got(value)}{hint}")


def _parse_workdir(value: object, info: ValidationInfo) -> Path:
    """An existing directory, made absolute against the context's ``base_dir`` (or the cwd)."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ValueError(f"expected a directory path, got {_got(value)}")
    try:
        path = (Path((info.context or {}).get("base_dir") or Path.cwd())
                / Path(value).expanduser()).resolve()
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"cannot resolve {str(value)!r}: {exc}") from None
    if not path.is_dir():
        raise ValueError(f"{'not a directory' if path.exists() else 'no such directory'}: {path}")
    return path


def _check_items(value: object, ok: Callable[[Any], str | None], what: str) -> list[Any]:
    """A list whose items all pass ``ok`` (which returns a problem or None) and are unique."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of {what}, got {_got(value)}")
    problems: list[tuple[Loc, str]] = [((i,), ok(x) or f"{_show(x)} is listed twice")
                                       for i, x in enumerate(value) if ok(x) or x in value[:i]]
    if problems:
        raise _Invalid(problems)
    return list(value)


def _parse_gpus(value: object) -> Literal["auto", "none"] | list[int]:
    """``auto``, ``none`` or unique GPU indices, with a hint for YAML 1.1 booleans."""
    if value in ("auto", "none") and isinstance(value, str):
        return "auto" if value == "auto" else "none"
    if isinstance(value, (list, tuple)) and not value:
        raise ValueError("empty list of GPUs: write `none` to run without GPUs")
    if isinstance(value, (list, tuple)):
        return _check_items(value, lambda x: None if type(x) is int and x >= 0 else
                            f"expected a GPU index (an integer >= 0), got {_got(x)}", "GPU indices")
    hint = ""
    if isinstance(value, str) and value.lower() in ("no", "n", "off", "false", "none"):
        hint = f"; `{value}` is not a boolean here: write `none` to run without GPUs"
    elif isinstance(value, str) and value.lower() in ("yes", "y", "on", "true", "auto"):
        hint = f"; `{value}` is not a boolean here: write `auto` to use the free GPUs"
    elif type(value) is int:
        hint = f"; for GPU {value} alone write [{value}]"
    raise ValueError(f"expected auto, none or a list of GPU indices such as [0, 2];"
                     f" got {_show(value)}{hint}")


def _parse_retry_on(value: object) -> list[str]:
    """Unique outcomes out of :data:`RETRYABLE_STATUSES`."""
    return _check_items(value, lambda x: None if x in RETRYABLE_STATUSES else (
        f"cannot retry on {_show(x)}: expected one of {', '.join(RETRYABLE_STATUSES)}"),
        "outcomes such as [timeout, crashed]")


def _parse_dist(value: object) -> Dist:
    """A one-key mapping ``{kind: args}`` whose arguments fit the kind."""
    forms = "{loguniform: [low, high]}, {uniform: [low, high]}, {choice: [...]}, {randint: [low, high]}"
    if not isinstance(value, Mapping) or len(value) != 1:
        raise ValueError(f"expected one of {forms}; got {_got(value)}")
    ((kind, args),) = value.items()
    if kind not in ("loguniform", "uniform", "choice", "randint"):
        close = difflib.get_close_matches(str(kind), ["loguniform", "uniform", "choice", "randint"], 1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown distribution {_show(kind)}{guess}; expected one of {forms}")
    if not isinstance(args, (list, tuple)) or not args or (kind != "choice" and len(args) != 2):
        shape = "a non-empty list of values" if kind == "choice" else "[low, high]"
        raise ValueError(f"{kind}: expected {shape}, got {_got(args)}")
    if kind != "choice":
        low, high = args
        types = (int,) if kind == "randint" else (int, float)
        if any(isinstance(x, bool) or not isinstance(x, types) or not math.isfinite(x) for x in args):
            what = "integers" if kind == "randint" else "numbers"
            raise ValueError(f"{kind}: low and high must be {what}; got [{_show(low)}, {_show(high)}]")
        ok, rule = {"loguniform": (0 < low < high, "0 < low < high"),
                    "uniform": (low < high, "low < high"),
                    "randint": (low <= high, "low <= high (both inclusive)")}[kind]
        if not ok:
            raise ValueError(f"{kind}: needs {rule}; got [{low}, {high}]")
    return {kind: list(args)}


def _not_dot_or_dotdot(value: str) -> str:
    """A name that is not ``.`` or ``..``: in ``runs/{name}`` those would name another directory."""
    if value in (".", ".."):
        raise ValueError(f"invalid name {value!r}: not `.` or `..`, which in the run directory"
                         " (runs/{name}) would name another directory")
    return value


def _output_dir(value: str) -> str:
    """A non-empty path in which ``{name}`` is the only placeholder."""
    if not value.strip() or re.search(r"[{}]", value.replace("{name}", "")):
        raise ValueError(f"invalid run directory {value!r}: a path in which only {{name}} is replaced")
    return value


Duration = Annotated[float, PlainValidator(lambda v: parse_duration(v)),
                     PlainSerializer(format_duration, return_type=str)]
Size = Annotated[int, PlainValidator(lambda v: parse_size(v))]
Count = Annotated[StrictInt, Field(ge=1, le=1000)]
Seed = Annotated[StrictInt, Field(ge=0, le=2**32 - 1)]  # the range numpy and scikit-learn accept
ParamName = Annotated[StrictStr, _matching(_IDENT, "name", "use letters, digits and '_', not"
                                                           " starting with a digit")]
ModuleName = Annotated[StrictStr, _matching(_DOTTED, "module name", "e.g. tensorflow or a.b")]


# ---------------------------------------------------------------- the models
class _Section(BaseModel):
    """Base of the spec's models: unknown keys are refused, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class RandomSearch(_Section):
    """``samples`` trials, each drawn from ``space`` (name -> :data:`Dist`)."""

    samples: Annotated[StrictInt, Field(ge=1, le=1_000_000)]
    seed: Seed = 0
    space: Annotated[dict[ParamName, Annotated[Dist, PlainValidator(_parse_dist)]],
                     _non_empty("empty space: give at least one parameter and its distribution")]


class SearchSpec(_Section):
    """Exactly one of ``grid`` (cartesian product, in the order written) or ``random``."""

    grid: Union[Annotated[dict[ParamName, Annotated[list[Any], _non_empty("empty list of values")]],
                          _non_empty("empty grid: give at least one parameter and its values")],
                None] = None
    random: Union[RandomSearch, None] = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchSpec:
        if (self.grid is None) == (self.random is None):
            raise ValueError("give exactly one of grid or random")
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

    gpus: Annotated[Union[Literal["auto", "none"], list[int]], PlainValidator(_parse_gpus)] = "auto"
    per_gpu: Annotated[StrictInt, Field(ge=1, le=1024)] = 1
    workers: Union[Annotated[StrictInt, Field(ge=1, le=100_000)], None] = None
    min_free_memory: Annotated[int, PlainValidator(lambda v: parse_size(v, allow_zero=True))] = 1 << 30
    spares: StrictBool = True
    zygote: StrictBool = False


class LimitsSpec(_Section):
    """Limits of one attempt: durations in seconds, memory in bytes (None: no limit)."""

    timeout: Duration = 1800.0
    grace: Duration = 10.0
    max_rss: Union[Size, None] = None
    max_gpu_memory: Union[Size, None] = None
    exit_timeout: Duration = 30.0
    stall: Union[Duration, None] = None


class RetrySpec(_Section):
    """Attempts per fold in all, the outcomes retried, and the base backoff in seconds."""

    attempts: Annotated[StrictInt, Field(ge=1, le=100)] = 3
    on: Annotated[list[str], PlainValidator(_parse_retry_on)] = Field(
        default_factory=lambda: ["timeout", "crashed", "memory"])
    backoff: Annotated[float, PlainValidator(lambda v: parse_duration(v, allow_zero=True)),
                       PlainSerializer(format_duration, return_type=str)] = 5.0


class OutputSpec(_Section):
    """Where the run directory goes; ``{name}`` is replaced by the spec's name."""

    dir: Annotated[StrictStr, AfterValidator(_output_dir)] = "runs/{name}"


class Spec(_Section):
    """A validated fold spec; build it with :func:`load_spec`. ``workdir`` is absolute."""

    name: Annotated[StrictStr, Field(max_length=100), _matching(
        r"[A-Za-z0-9._-]+", "name", "use letters, digits, '.', '_' and '-'"),
        AfterValidator(_not_dot_or_dotdot)]
    entrypoint: Annotated[StrictStr, _matching(
        rf"{_DOTTED}:{_DOTTED}", "entry point", "expected module:function, e.g. digits:train_fold")]
    workdir: Annotated[Path, PlainValidator(_parse_workdir), PlainSerializer(str)] = Field(
        default=Path("."), validate_default=True)
    preload: list[ModuleName] = Field(default_factory=list)
    params: dict[ParamName, Any] = Field(default_factory=dict)
    search: Union[SearchSpec, None] = None
    cv: CVSpec = Field(default_factory=CVSpec)
    objective: Union[ObjectiveSpec, None] = None
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    retry: RetrySpec = Field(default_factory=RetrySpec)
    env: dict[Annotated[StrictStr, _matching(_IDENT, "variable name", "use letters, digits, '_'")],
              Annotated[str, PlainValidator(_parse_env_value)]] = Field(default_factory=dict)
    output: OutputSpec = Field(default_factory=OutputSpec)
    _source: Union[Path, None] = PrivateAttr(default=None)

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
        return data

    def to_yaml(self) -> str:
        """:meth:`to_dict` as YAML that :func:`load_spec` reads back to an equal Spec."""
        return dump_yaml(self.to_dict())


_SECTIONS: dict[Loc, type[BaseModel]] = {
    (): Spec, ("search",): SearchSpec, ("search", "random"): RandomSearch, ("cv",): CVSpec,
    ("objective",): ObjectiveSpec, ("resources",): ResourcesSpec, ("limits",): LimitsSpec,
    ("retry",): RetrySpec, ("output",): OutputSpec}


# ---------------------------------------------------------------- problems and overrides
_EXPECTED = {"int_type": "an integer", "string_type": "a string", "bool_type": "true or false",
             "float_type": "a number", "list_type": "a list", "dict_type": "a mapping",
             "model_type": "a mapping", "model_attributes_type": "a mapping"}
_BOUNDS = {"greater_than_equal": ("at least", "ge", ""), "less_than_equal": ("at most", "le", ""),
           "string_too_long": ("at most", "max_length", " characters"),
           "string_too_short": ("at least", "min_length", " characters")}


def _messages(error: Any, loc: Loc) -> list[tuple[Loc, str]]:
    """Readable (sub-location, message) pairs for one pydantic error."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if isinstance(ctx.get("error"), _Invalid):
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
        return [((), f"key {_show(value)} is not a string{hint}")]
    if kind in _EXPECTED:
        return [((), f"expected {_EXPECTED[kind]}, got {_got(value)}")]
    if kind in _BOUNDS:
        words, key, unit = _BOUNDS[kind]
        return [((), f"must be {words} {ctx.get(key)}{unit}, got {_show(value)}")]
    if kind == "literal_error":
        return [((), f"expected {ctx.get('expected')}, got {_got(value)}")]
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
            value, _, value_problems = _parse_yaml(value_text)  # the same strict YAML as files
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
        if error.get("input") is _UNREADABLE:
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
            out.append(_fmt(full, via or (f"line {line}" if line else None), message))
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
        raw, lines, problems = _read_spec_file(origin)
        base_dir = base_dir or origin.absolute().parent
    else:
        raise TypeError(f"load_spec() takes a path, a mapping or a Spec, not {type(source).__name__}")
    label = str(origin) if origin else None
    if not isinstance(raw, dict):
        empty = "the spec is empty: expected a mapping with at least name and entrypoint"
        got = f"the spec must be a mapping of keys such as name and entrypoint; got {_got(raw)}"
        raise SpecError(problems or [empty if raw is None else _fmt((), "line 1", got)], label)
    applied = _apply_overrides(raw, overrides, problems)
    for section in ("preload", "params", "cv", "resources", "limits", "retry", "env", "output"):
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
