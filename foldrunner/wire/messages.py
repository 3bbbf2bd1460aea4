"""The result pipe's wire format: what a fold's process may say to the orchestrator.

A fold writes length-prefixed pickles (an 8-byte big-endian length, then the payload) to
its own result pipe. What comes back is **untrusted**: a fold may write anything to that
fd. The orchestrator's side, :func:`read_messages`, therefore

* unpickles with :class:`_RestrictedUnpickler`, which resolves no global but plain
  builtins and foldrunner's own :class:`~foldrunner.wire.outcome.ChildOutcome` and
  :class:`~foldrunner.wire.outcome.Status` (and even those only as inert stand-ins): a numpy
  type, a TensorFlow class or ``os.system`` is refused by name, its module never imported;
* refuses a frame whose header announces more than :data:`MAX_FRAME_SIZE` bytes as soon
  as the header is read, without buffering it;
* checks the shape of every message (:data:`MESSAGE_SHAPES`) and rebuilds it from plain
  values, so that only well-formed messages leave it;
* never raises: anything else becomes one ``("bad", "<why>")`` message, after which the
  rest of that pipe is read and dropped (a stream that went bad once is not trusted again;
  the supervisor makes that fold ``crashed`` with the reason as its error).

The fold's side builds its messages with :func:`started`, :func:`ready`,
:func:`preload_error`, :func:`report` and :func:`result` and frames them with
:func:`encode_message`, which refuses a frame the orchestrator would refuse.

This module is imported by every fold's process: keep it free of heavy imports.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from dataclasses import fields
from typing import Any, Literal, Union

from foldrunner.wire.outcome import ChildOutcome, Status

MAX_FRAME_SIZE = 64 * 1024 * 1024
"""The largest payload (bytes) of one frame a fold may send: 64 MiB. A header that
announces more makes the fold's stream bad at once (garbage on the pipe reads as an
absurd length); a fold's own too-large result becomes an ``error`` in the fold."""

FRAME_HEADER = struct.Struct("!Q")
"""The frame header: the payload's length, 8 bytes big-endian."""

_READ_CHUNK = 1 << 20
_READ_PER_CALL = 8 * _READ_CHUNK
"""One :func:`read_messages` call reads at most this much, so that a fold that writes
without pause cannot hold the orchestrator's loop (the rest is read on the next call;
a dead fold's pipe holds at most the pipe's capacity, 1 MiB at most unprivileged)."""

_POISON = b"\xff" * FRAME_HEADER.size
"""A buffer that starts with these bytes belongs to a stream that went bad; the reason
follows them. No healthy buffer can start so: such a header is over the limit and is
refused in the call that completes it."""

_SHOWN = 60
"""Characters of a value quoted in a reason."""

PLAIN_TYPES: tuple[type, ...] = (int, float, str, bool, type(None))
"""The types of a metric or report value on the wire (exact types, no subclasses)."""

# -- the messages ------------------------------------------------------------------------
Plain = Union[int, float, str, bool, None]
StartedMessage = tuple[Literal["started"], int, float]
ReadyMessage = tuple[Literal["ready"], int, float]
PreloadErrorMessage = tuple[Literal["preload_error"], str, str]
ReportMessage = tuple[Literal["report"], dict[str, Plain], float]
ResultMessage = tuple[Literal["result"], ChildOutcome]
BadMessage = tuple[Literal["bad"], str]
Message = Union[
    StartedMessage, ReadyMessage, PreloadErrorMessage, ReportMessage, ResultMessage, BadMessage
]

MESSAGE_SHAPES = {
    "started": "('started', pid: int, time: float)",
    "ready": "('ready', pid: int, time: float)",
    "preload_error": "('preload_error', module: str, error: str)",
    "report": "('report', {name: int | float | str | bool | None}, time: float)",
    "result": "('result', ChildOutcome)",
}
"""Every message a fold may send, as the reasons of bad ones describe it."""


def started(pid: int, at: float) -> StartedMessage:
    """The fold's process has started (its pid, ``time.time()``)."""
    return ("started", pid, at)


def ready(pid: int, at: float) -> ReadyMessage:
    """A warm spare has imported its preloads and waits for its fold."""
    return ("ready", pid, at)


def preload_error(module: str, error: str) -> PreloadErrorMessage:
    """A warm spare could not import one of its preloads."""
    return ("preload_error", module, error)


def report(values: dict[str, Plain], at: float) -> ReportMessage:
    """Intermediate metrics of ``ctx.report`` (already plain: see ``FoldContext.report``)."""
    return ("report", values, at)


def result(outcome: ChildOutcome) -> ResultMessage:
    """The fold's outcome: its last message."""
    return ("result", outcome)


class FrameTooLarge(ValueError):
    """A message would be a frame over :data:`MAX_FRAME_SIZE`."""


class BadFrame(ValueError):
    """What :func:`decode_frames` raises for a header over :data:`MAX_FRAME_SIZE`."""


# -- writing -----------------------------------------------------------------------------
def encode_frame(message: Any) -> bytes:
    """A length-prefixed pickle, of any size (the orchestrator's tasks to its spares)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME_HEADER.pack(len(payload)) + payload


def encode_message(message: Message) -> bytes:
    """The frame of a fold's message; raises :class:`FrameTooLarge` over the limit."""
    frame = encode_frame(message)
    size = len(frame) - FRAME_HEADER.size
    if size > MAX_FRAME_SIZE:
        raise FrameTooLarge(
            f"its {message[0]!r} message is {size} bytes pickled, over the limit of "
            f"{MAX_FRAME_SIZE} bytes (foldrunner.wire.messages.MAX_FRAME_SIZE)"
        )
    return frame


# -- reading -----------------------------------------------------------------------------
def _oversize(size: int) -> str:
    return (
        f"it sent a frame header announcing {size} bytes, over the limit of {MAX_FRAME_SIZE} "
        "bytes (foldrunner.wire.messages.MAX_FRAME_SIZE): garbage on its result pipe or a message too "
        "large; the rest of its result pipe was ignored"
    )


def _split(buf: bytearray) -> tuple[list[bytes], str | None]:
    """Take every complete frame's payload off the front of ``buf``; stop at a header
    over the limit and say why (the frames before it are returned)."""
    out: list[bytes] = []
    pos, n, head = 0, len(buf), FRAME_HEADER.size
    why = None
    while n - pos >= head:
        (size,) = FRAME_HEADER.unpack_from(buf, pos)
        if size > MAX_FRAME_SIZE:
            why = _oversize(size)
            break
        end = pos + head + size
        if end > n:
            break
        out.append(bytes(buf[pos + head : end]))
        pos = end
    if pos:
        del buf[:pos]
    return out, why


def decode_frames(buf: bytearray) -> list[bytes]:
    """Take every complete frame's payload off the front of ``buf``.

    Raises :class:`BadFrame` at a header over :data:`MAX_FRAME_SIZE` (the frames before
    it are taken off ``buf``, but lost: use :func:`read_messages` on an untrusted pipe).
    """
    out, why = _split(buf)
    if why is not None:
        raise BadFrame(why)
    return out


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


_ARITY = {"started": 3, "ready": 3, "preload_error": 3, "report": 3, "result": 2}


def _message(obj: Any) -> Message:
    """``obj`` checked and rebuilt from plain values, or ``("bad", why)``."""
    kind = obj[0] if type(obj) is tuple and obj else None
    if type(kind) is not str or _ARITY.get(kind) != len(obj):
        return ("bad", f"it sent a message of an unexpected shape: {_describe(obj)}")
    why = ""
    if kind == "started" or kind == "ready":
        if _is_int(obj[1]) and _is_time(obj[2]):
            return started(obj[1], float(obj[2])) if kind == "started" else ready(obj[1], float(obj[2]))
        why = "its pid must be an int and its time a number"
    elif kind == "preload_error":
        if type(obj[1]) is str and type(obj[2]) is str:
            return preload_error(obj[1], obj[2])
        why = "its module and error must be strings"
    elif kind == "report":
        values, why = _plain_dict(obj[1], "its values")
        if values is not None:
            if _is_time(obj[2]):
                return report(dict(values), float(obj[2]))
            why = f"its time is a {_type(obj[2])}, not a number"
    else:
        outcome, why = _outcome(obj[1])
        if outcome is not None:
            return result(outcome)
    return ("bad", f"it sent a malformed {kind!r} message ({why}); expected {MESSAGE_SHAPES[kind]}")


def _decode(payload: bytes) -> Message:
    """One frame's payload as a checked message, or ``("bad", why)``; never raises."""
    try:
        obj = _unpickle(payload)
    except RefusedGlobal as exc:
        return ("bad", f"a message from it could not be unpickled: {exc}")
    except Exception as exc:  # noqa: BLE001 - whatever the fold sent, we report it
        return ("bad", f"a message from it could not be unpickled: {type(exc).__name__}: "
                       f"{str(exc)[:200]}")
    try:
        return _message(obj)
    except Exception as exc:  # noqa: BLE001 - a check that trips is a bad message too
        return ("bad", f"its message could not be checked: {type(exc).__name__}: {str(exc)[:200]}")


def _poison(buf: bytearray, why: str) -> None:
    buf[:] = _POISON + why.encode("utf-8", "replace")


def _poisoned(buf: bytearray) -> str | None:
    if buf[: len(_POISON)] == _POISON:
        return bytes(buf[len(_POISON):]).decode("utf-8", "replace")
    return None


def read_messages(fd: int, buf: bytearray) -> tuple[list[Any], bool]:
    """Read what a non-blocking result pipe holds: ``(messages, at end of file)``.

    ``buf`` is the pipe's own buffer, kept by the caller between calls and otherwise
    opaque. Every message is well-formed (see :data:`MESSAGE_SHAPES`; a result's outcome
    is a fresh :class:`ChildOutcome`) or ``("bad", why)``. After a bad message, the rest
    of the pipe is read and dropped; each later call that reads more of it says
    ``("bad", why)`` again (the same why). A frame cut short by the end of the pipe is bad.
    Never raises.
    """
    out: list[Any] = []
    eof = False
    why = _poisoned(buf)
    bad_before = why is not None
    dropped = False
    left = _READ_PER_CALL
    while left > 0:
        try:
            chunk = os.read(fd, min(_READ_CHUNK, left))
        except BlockingIOError:
            break
        except OSError:
            chunk = b""
        if not chunk:
            eof = True
            break
        left -= len(chunk)
        if why is not None:
            dropped = True
            continue
        buf += chunk
        payloads, split_why = _split(buf)
        for payload in payloads:
            message = _decode(payload)
            out.append(message)
            if message[0] == "bad":
                why = message[1]
                break
        if why is None and split_why is not None:
            why = split_why
            out.append(("bad", why))
        if why is not None:
            _poison(buf, why)
    head = FRAME_HEADER.size
    if eof and why is None and buf:
        if len(buf) < head:
            why = f"its result pipe ended inside a frame header ({len(buf)} of its {head} bytes)"
        else:
            (size,) = FRAME_HEADER.unpack_from(buf)
            why = (f"its result pipe ended inside a message: {len(buf) - head} of the {size} "
                   "bytes its header announced")
        out.append(("bad", why))
        _poison(buf, why)
    elif bad_before and dropped and why is not None:
        out.append(("bad", why))
    return out, eof
