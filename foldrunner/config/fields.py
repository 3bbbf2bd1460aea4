"""The types of the spec's values, each with the validator that reads it.

A model in :mod:`foldrunner.config.spec` names a type from here (``timeout: Duration``,
``gpus: Gpus``) and gets its parsing and its messages with it. A validator raises
ValueError with a message that says what it got and what it expects, or :class:`Invalid`
with one message per bad item of a list (located at the item).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeGuard, Union

from pydantic import (AfterValidator, Field, PlainSerializer, PlainValidator, StrictInt, StrictStr,
                      ValidationInfo)

from foldrunner.config.units import format_duration, parse_duration, parse_size
from foldrunner.config.yamlload import Loc, show_value
from foldrunner.wire.outcome import RETRYABLE

#: the outcomes that ``retry.on`` may name
RETRYABLE_STATUSES: tuple[str, ...] = tuple(s.value for s in RETRYABLE)

Dist = dict[str, list[Any]]  # one random-search dimension, e.g. {"uniform": [0.0, 0.5]}
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_DOTTED = rf"{_IDENT}(?:\.{_IDENT})*"
_DISTRIBUTIONS = ["loguniform", "uniform", "choice", "randint"]


class Invalid(ValueError):
    """Raised by a validator to report problems below its own location (list items)."""

    def __init__(self, items: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(message for _, message in items))
        self.items = items


def got(value: object) -> str:
    """:func:`~foldrunner.config.yamlload.show_value` plus the value's kind, with a hint
    for YAML 1.1 booleans."""
    kind = {bool: "a boolean", str: "a string", int: "an integer", float: "a number"}.get(type(value))
    text = f"{show_value(value)} ({kind})" if kind else show_value(value)
    if isinstance(value, str) and value.lower() in ("yes", "no", "on", "off", "y", "n"):
        text += f"; `{value}` is not a boolean in this YAML: write true or false"
    return text


# ---------------------------------------------------------------- validators
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
    raise ValueError(f"expected a string or a number, got {got(value)}{hint}")


def _parse_workdir(value: object, info: ValidationInfo) -> Path:
    """An existing directory, made absolute against the context's ``base_dir`` (or the cwd)."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ValueError(f"expected a directory path, got {got(value)}")
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
        raise ValueError(f"expected a list of {what}, got {got(value)}")
    problems: list[tuple[Loc, str]] = [((i,), ok(x) or f"{show_value(x)} is listed twice")
                                       for i, x in enumerate(value) if ok(x) or x in value[:i]]
    if problems:
        raise Invalid(problems)
    return list(value)


def _parse_gpus(value: object) -> Literal["auto", "none"] | list[int]:
    """``auto``, ``none`` or unique GPU indices, with a hint for YAML 1.1 booleans."""
    if value in ("auto", "none") and isinstance(value, str):
        return "auto" if value == "auto" else "none"
    if isinstance(value, (list, tuple)) and not value:
        raise ValueError("empty list of GPUs: write `none` to run without GPUs")
    if isinstance(value, (list, tuple)):
        return _check_items(value, lambda x: None if type(x) is int and x >= 0 else
                            f"expected a GPU index (an integer >= 0), got {got(x)}", "GPU indices")
    hint = ""
    if isinstance(value, str) and value.lower() in ("no", "n", "off", "false", "none"):
        hint = f"; `{value}` is not a boolean here: write `none` to run without GPUs"
    elif isinstance(value, str) and value.lower() in ("yes", "y", "on", "true", "auto"):
        hint = f"; `{value}` is not a boolean here: write `auto` to use the free GPUs"
    elif type(value) is int:
        hint = f"; for GPU {value} alone write [{value}]"
    raise ValueError(f"expected auto, none or a list of GPU indices such as [0, 2];"
                     f" got {show_value(value)}{hint}")


def _parse_retry_on(value: object) -> list[str]:
    """Unique outcomes out of :data:`RETRYABLE_STATUSES`."""
    return _check_items(value, lambda x: None if x in RETRYABLE_STATUSES else (
        f"cannot retry on {show_value(x)}: expected one of {', '.join(RETRYABLE_STATUSES)}"),
        "outcomes such as [timeout, crashed]")


def _parse_dist(value: object) -> Dist:
    """A one-key mapping ``{kind: args}`` whose arguments fit the kind."""
    forms = "{loguniform: [low, high]}, {uniform: [low, high]}, {choice: [...]}, {randint: [low, high]}"
    if not isinstance(value, Mapping) or len(value) != 1:
        raise ValueError(f"expected one of {forms}; got {got(value)}")
    ((kind, args),) = value.items()
    if kind not in _DISTRIBUTIONS:
        close = difflib.get_close_matches(str(kind), _DISTRIBUTIONS, 1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown distribution {show_value(kind)}{guess}; expected one of {forms}")
    if not isinstance(args, (list, tuple)) or not args or (kind != "choice" and len(args) != 2):
        shape = "a non-empty list of values" if kind == "choice" else "[low, high]"
        raise ValueError(f"{kind}: expected {shape}, got {got(args)}")
    if kind != "choice":
        low, high = args
        types = (int,) if kind == "randint" else (int, float)
        if any(isinstance(x, bool) or not isinstance(x, types) or not math.isfinite(x) for x in args):
            what = "integers" if kind == "randint" else "numbers"
            raise ValueError(f"{kind}: low and high must be {what};"
                             f" got [{show_value(low)}, {show_value(high)}]")
        ok, rule = {"loguniform": (0 < low < high, "0 < low < high"),
                    "uniform": (low < high, "low < high"),
                    "randint": (low <= high, "low <= high (both inclusive)")}[kind]
        if not ok:
            raise ValueError(f"{kind}: needs {rule}; got [{low}, {high}]")
    return {kind: list(args)}


#: Ray's default GCS port, suggested in messages about a missing port
RAY_DEFAULT_PORT = 6379
_HOST = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"  # a host name or an IPv4 address


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPv6]:PORT`` for an IPv6 address) -> ``(host, port)``; a ValueError
    that says what is wrong otherwise. The host is returned without brackets."""
    value = text.strip()
    if "://" in value:
        scheme = value.split("://", 1)[0]
        raise ValueError(f"{value!r} is a URL ({scheme}://...); give the Ray head's address as"
                         f" HOST:PORT, e.g. 10.0.0.5:{RAY_DEFAULT_PORT} (Ray Client addresses,"
                         " ray://..., are not supported)")
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]+)", value) or re.fullmatch(
        rf"({_HOST}):([0-9]+)", value)
    if match is None:
        if value.count(":") > 1 and not value.startswith("["):
            hint = f"write an IPv6 address in brackets, e.g. [::1]:{RAY_DEFAULT_PORT}"
        elif ":" not in value:
            hint = f"the port is missing, e.g. {value or 'HOST'}:{RAY_DEFAULT_PORT} (Ray's default)"
        else:
            hint = f"expected HOST:PORT, e.g. 10.0.0.5:{RAY_DEFAULT_PORT} or headnode:{RAY_DEFAULT_PORT}"
        raise ValueError(f"invalid address {value!r}: {hint}")
    host, port = match.group(1), int(match.group(2))
    if not 1 <= port <= 65535:
        raise ValueError(f"invalid address {value!r}: the port must be 1 to 65535, got {port}")
    return host, port


def _parse_ray_address(value: object) -> str:
    """``auto``, ``local`` or ``HOST:PORT`` (checked by :func:`parse_host_port`)."""
    forms = f"expected auto, local or HOST:PORT such as 10.0.0.5:{RAY_DEFAULT_PORT}"
    if isinstance(value, str) and value in ("auto", "local"):
        return value
    if isinstance(value, str) and value.strip():
        try:
            parse_host_port(value)
        except ValueError as exc:
            raise ValueError(str(exc) if "://" in value else f"{exc}; or write auto or local") from None
        return value.strip()
    hint = f"; for a port on this machine write 127.0.0.1:{value}" if type(value) is int else ""
    raise ValueError(f"{forms}; got {got(value)}{hint}")


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


# ---------------------------------------------------------------- the types
Duration = Annotated[float, PlainValidator(lambda v: parse_duration(v)),
                     PlainSerializer(format_duration, return_type=str)]
DurationOrZero = Annotated[float, PlainValidator(lambda v: parse_duration(v, allow_zero=True)),
                           PlainSerializer(format_duration, return_type=str)]
Size = Annotated[int, PlainValidator(lambda v: parse_size(v))]
SizeOrZero = Annotated[int, PlainValidator(lambda v: parse_size(v, allow_zero=True))]
Count = Annotated[StrictInt, Field(ge=1, le=1000)]
Seed = Annotated[StrictInt, Field(ge=0, le=2**32 - 1)]  # the range numpy and scikit-learn accept
ParamName = Annotated[StrictStr, _matching(_IDENT, "name", "use letters, digits and '_', not"
                                                           " starting with a digit")]
ModuleName = Annotated[StrictStr, _matching(_DOTTED, "module name", "e.g. tensorflow or a.b")]
RunName = Annotated[StrictStr, Field(max_length=100), _matching(
    r"[A-Za-z0-9._-]+", "name", "use letters, digits, '.', '_' and '-'"),
    AfterValidator(_not_dot_or_dotdot)]
EntryPoint = Annotated[StrictStr, _matching(
    rf"{_DOTTED}:{_DOTTED}", "entry point", "expected module:function, e.g. digits:train_fold")]
Workdir = Annotated[Path, PlainValidator(_parse_workdir), PlainSerializer(str)]
EnvName = Annotated[StrictStr, _matching(_IDENT, "variable name", "use letters, digits, '_'")]
EnvValue = Annotated[str, PlainValidator(_parse_env_value)]
OutputDir = Annotated[StrictStr, AfterValidator(_output_dir)]
Gpus = Annotated[Union[Literal["auto", "none"], list[int]], PlainValidator(_parse_gpus)]
RetryOn = Annotated[list[str], PlainValidator(_parse_retry_on)]
Backend = Literal["local", "ray"]
RayAddress = Annotated[str, PlainValidator(_parse_ray_address)]


def _finite_number(value: object) -> TypeGuard[float]:
    """Whether ``value`` is an int or float written as a number: not a boolean, not a
    string, not infinite nor NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_cpus(value: object) -> float:
    """CPUs of a fold's Ray task: a number above 0, at most 1024 (0.5 shares a CPU)."""
    if _finite_number(value) and 0 < value <= 1024:
        return float(value)
    raise ValueError(f"expected a number of CPUs above 0 and at most 1024, e.g. 1, 0.5 or 4;"
                     f" got {got(value)}")


CpusPerFold = Annotated[float, PlainValidator(_parse_cpus)]


def _between(lo: float, hi: float, example: str) -> PlainValidator:
    """A number strictly between ``lo`` and ``hi`` (no boolean, no string, nothing
    infinite or NaN)."""
    def parse(value: object) -> float:
        if _finite_number(value) and lo < value < hi:
            return float(value)
        raise ValueError(f"expected a number above {lo:g} and below {hi:g}, e.g. {example};"
                         f" got {got(value)}")
    return PlainValidator(parse)


Percent = Annotated[float, _between(0, 100, "25")]
"""A per cent strictly between 0 and 100."""
Probability = Annotated[float, _between(0, 1, "0.1")]
"""A probability strictly between 0 and 1."""
RayNamespace = Annotated[StrictStr, Field(max_length=100), _matching(
    r"[A-Za-z0-9._-]+", "namespace", "use letters, digits, '.', '_' and '-'")]
Grid = Annotated[dict[ParamName, Annotated[list[Any], _non_empty("empty list of values")]],
                 _non_empty("empty grid: give at least one parameter and its values")]
Space = Annotated[dict[ParamName, Annotated[Dist, PlainValidator(_parse_dist)]],
                  _non_empty("empty space: give at least one parameter and its distribution")]
