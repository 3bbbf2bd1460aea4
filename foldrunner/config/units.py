"""Durations and sizes as the spec writes them: ``90``, ``15m``, ``1h30m``; ``512MiB``, ``2GiB``.

:func:`parse_duration` and :func:`parse_size` turn what a user wrote into seconds and
bytes, refusing anything else with a message that shows the accepted forms;
:func:`format_duration` writes seconds back the way a spec would (``1800 -> "30m"``).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

from foldrunner.config.yamlload import show_value

_DURATION_HINT = "use e.g. 90, 90s, 15m, 2h, 1h30m"
_NUMBER = re.compile(r"\+?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|d|h|m|s)(?![a-z])\s*", re.I)
_DURATION_UNITS = {"d": Decimal(86400), "h": Decimal(3600), "m": Decimal(60), "s": Decimal(1),
                   "ms": Decimal("0.001")}

_SIZE_HINT = "use e.g. 1073741824 (bytes), 512MiB, 2GiB, 1.5GB"
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_duration(value: object, *, allow_zero: bool = False) -> float:
    """Seconds from ``90``, ``1.5``, ``"90s"``, ``"15m"``, ``"2h"``, ``"1h30m"``, ``"1d"``,
    ``"250ms"`` (units largest first, each once). Raises ValueError for a bool, a negative,
    zero (unless ``allow_zero``), an empty string or garbage, with the accepted forms."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"invalid duration {show_value(value)}: {_DURATION_HINT}")
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
        raise ValueError(f"invalid duration {show_value(value)}: must be {bound} ({_DURATION_HINT})")
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


def parse_size(value: object, *, allow_zero: bool = False) -> int:
    """Bytes from an int or a string such as ``"512MiB"``, ``"2GiB"``, ``"1.5GB"``, ``"4KiB"``,
    ``"1TB"`` (units in any case). A bare ``K/M/G/T`` is refused as ambiguous (1024- or
    1000-based?). Raises ValueError with the accepted forms."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"invalid size {show_value(value)}: {_SIZE_HINT}")
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
        raise ValueError(f"invalid size {show_value(value)}: not a whole number of bytes")
    if amount < 0 or (amount == 0 and not allow_zero):
        bound = "0 or more" if allow_zero else "more than 0"
        raise ValueError(f"invalid size {show_value(value)}: must be {bound} bytes")
    return int(amount)
