"""One frame's payload, from an untrusted fold, as a checked message.

:func:`decode_message` unpickles with :class:`_RestrictedUnpickler`, which resolves no
global but plain builtins and foldrunner's own
:class:`~foldrunner.wire.outcome.ChildOutcome` and :class:`~foldrunner.wire.outcome.Status`,
and even those only as inert stand-ins: a numpy type, a TensorFlow class or ``os.system``
is refused by name, its module never imported. It then checks the shape of the message
(:data:`~foldrunner.wire.messages.MESSAGE_SHAPES`) and rebuilds it from plain values as
one of the dataclasses of :mod:`foldrunner.wire.messages`, so that only well-formed
messages leave it; anything else becomes :class:`~foldrunner.wire.messages.Bad`. It
never raises.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import fields
from typing import Any

from foldrunner.wire.messages import (
    FOLD_MESSAGES,
    MESSAGE_SHAPES,
    PLAIN_TYPES,
    Bad,
    Message,
    Plain,
    PreloadError,
    Ready,
    Report,
    Result,
    Started,
)
from foldrunner.wire.outcome import ChildOutcome, Status

_SHOWN = 60
"""Characters of a value quoted in a reason."""


class _StatusStandIn:
    """What ``foldrunner.wire.outcome.Status(value)`` unpickles to: never the shared member
    itself, which a pickle's BUILD could otherwise rewrite in the orchestrator."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


class _OutcomeStandIn:
    """What a pickled ``ChildOutcome`` unpickles to: its fields, checked afterwards."""


_ALLOWED: dict[tuple[str, str], Any] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("foldrunner.wire.outcome", "ChildOutcome"): _OutcomeStandIn,
    ("foldrunner.wire.outcome", "Status"): _StatusStandIn,
}
"""Every global a fold's pickle may name (and what it gets instead)."""


class RefusedGlobal(pickle.UnpicklingError):
    """A fold's pickle named a global outside :data:`_ALLOWED`."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED`; never imports a module."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise RefusedGlobal(
                f"it refers to {str(module)[:_SHOWN]}.{str(name)[:_SHOWN]}, which foldrunner "
                "does not accept from a fold (only plain numbers, strings and containers, "
                "and foldrunner's own messages)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("it uses persistent ids")


def _unpickle(payload: bytes) -> Any:
    return _RestrictedUnpickler(io.BytesIO(payload)).load()


# -- describing what came ----------------------------------------------------------------
def _type(obj: object) -> str:
    """The name of ``obj``'s type as the fold knew it."""
    if type(obj) is _StatusStandIn:
        return "Status"
    if type(obj) is _OutcomeStandIn:
        return "ChildOutcome"
    return type(obj).__name__


def _describe(obj: object) -> str:
    if type(obj) is tuple:
        if not obj:
            return "tuple of 0 item(s)"
        first = obj[0]
        shown = repr(first[:_SHOWN]) if type(first) is str else _type(first)
        return f"tuple of {len(obj)} item(s) starting with {shown}"
    return _type(obj)


def _name(key: object) -> str:
    return repr(key[:_SHOWN]) if type(key) is str else f"a key of type {_type(key)}"


# -- checking it -------------------------------------------------------------------------
def _plain_dict(d: object, what: str) -> tuple[dict[str, Plain] | None, str]:
    """``(d, "")`` if ``d`` maps str to plain values, else ``(None, why)``."""
    if type(d) is not dict:
        return None, f"{what} is a {_type(d)}, not a dict"
    for k, v in d.items():
        if type(k) is not str:
            return None, f"{what} has {_name(k)}: names must be strings"
        if type(v) not in PLAIN_TYPES:
            return None, f"{what}: {_name(k)} is a {_type(v)}, not a number or string"
    return d, ""


def _is_int(x: object) -> bool:
    return type(x) is int


def _is_time(x: object) -> bool:
    return type(x) in (int, float)


_OUTCOME_FIELDS = {f.name: f for f in fields(ChildOutcome)}
_FIELD_CHECKS: dict[str, tuple[tuple[type, ...], str]] = {
    "error_type": ((str,), "a string"),
    "error": ((str,), "a string"),
    "traceback": ((str,), "a string"),
    "memory_error": ((bool,), "a bool"),
    "started_at": ((int, float), "a number"),
    "ended_at": ((int, float), "a number"),
    "maxrss_kb": ((int,), "an int"),
}


def _outcome(obj: object) -> tuple[ChildOutcome | None, str]:
    """A fresh :class:`ChildOutcome` from a checked stand-in, or ``(None, why)``."""
    if type(obj) is not _OutcomeStandIn:
        return None, f"its outcome is a {_type(obj)}, not a ChildOutcome"
    state = vars(obj)
    unknown = [k for k in state if k not in _OUTCOME_FIELDS]
    if unknown:
        return None, f"its outcome has unknown fields: {', '.join(_name(k) for k in unknown[:5])}"
    status = state.get("status")
    if type(status) is not _StatusStandIn or status.value not in (Status.OK.value, Status.ERROR.value):
        return None, "its outcome's status is not Status.OK or Status.ERROR"
    metrics, why = _plain_dict(state.get("metrics", {}), "its outcome's metrics")
    if metrics is None:
        return None, why
    values: dict[str, Any] = {}
    for key, (types, kind) in _FIELD_CHECKS.items():
        if key in state:
            if type(state[key]) not in types:
                return None, f"its outcome's {key} is a {_type(state[key])}, not {kind}"
            values[key] = state[key]
    for key in ("started_at", "ended_at"):
        if key in values:
            values[key] = float(values[key])
    return ChildOutcome(status=Status(status.value), metrics=dict(metrics), **values), ""


_ARITY = {cls.KIND: 1 + len(fields(cls)) for cls in FOLD_MESSAGES}
"""The length of each message's tuple on the pipe, its tag included."""


def _message(obj: Any) -> Message:
    """``obj`` (a message's tuple) checked and rebuilt from plain values, or :class:`Bad`."""
    kind = obj[0] if type(obj) is tuple and obj else None
    if type(kind) is not str or _ARITY.get(kind) != len(obj):
        return Bad(f"it sent a message of an unexpected shape: {_describe(obj)}")
    why = ""
    if kind == Started.KIND or kind == Ready.KIND:
        if _is_int(obj[1]) and _is_time(obj[2]):
            return Started(obj[1], float(obj[2])) if kind == Started.KIND else Ready(obj[1], float(obj[2]))
        why = "its pid must be an int and its time a number"
    elif kind == PreloadError.KIND:
        if type(obj[1]) is str and type(obj[2]) is str:
            return PreloadError(obj[1], obj[2])
        why = "its module and error must be strings"
    elif kind == Report.KIND:
        values, why = _plain_dict(obj[1], "its values")
        if values is not None:
            if _is_time(obj[2]):
                return Report(dict(values), float(obj[2]))
            why = f"its time is a {_type(obj[2])}, not a number"
    else:
        outcome, why = _outcome(obj[1])
        if outcome is not None:
            return Result(outcome)
    return Bad(f"it sent a malformed {kind!r} message ({why}); expected {MESSAGE_SHAPES[kind]}")


def decode_message(payload: bytes) -> Message:
    """One frame's payload as a checked message, or :class:`Bad`; never raises."""
    try:
        obj = _unpickle(payload)
    except RefusedGlobal as exc:
        return Bad(f"a message from it could not be unpickled: {exc}")
    except Exception as exc:  # noqa: BLE001 - whatever the fold sent, we report it
        return Bad(f"a message from it could not be unpickled: {type(exc).__name__}: "
                   f"{str(exc)[:200]}")
    try:
        return _message(obj)
    except Exception as exc:  # noqa: BLE001 - a check that trips is a bad message too
        return Bad(f"its message could not be checked: {type(exc).__name__}: {str(exc)[:200]}")
