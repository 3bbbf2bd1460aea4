"""What a fold's process may say to the orchestrator, as typed messages.

A fold says, in this order::

    Started                      a cold fold's process has started its task
    Ready, PreloadError...       a warm spare has imported its preloads (then Started,
                                 once it has taken its fold)
    Report...                    ``ctx.report``: intermediate metrics, a heartbeat
    Result                       the fold's outcome: its last message

and the orchestrator's reader adds :class:`Bad` when what came was not one of them.

On the pipe a message travels as a plain tuple, its tag first (:func:`as_tuple`), so that
the orchestrator's restricted unpickler (:mod:`foldrunner.wire.decode`) needs no class of
foldrunner's but :class:`~foldrunner.wire.outcome.ChildOutcome`. Only :mod:`foldrunner.wire`
knows that form: senders build these dataclasses, readers get them back and tell them
apart with ``isinstance`` or ``match``.

Imported by every fold's process: keep it free of heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Union

from foldrunner.wire.outcome import ChildOutcome

Plain = Union[int, float, str, bool, None]
"""A metric or report value on the wire."""

PLAIN_TYPES: tuple[type, ...] = (int, float, str, bool, type(None))
"""The types of a metric or report value on the wire (exact types, no subclasses)."""


@dataclass(frozen=True, slots=True)
class Started:
    """The fold's process has started its task (a spare: it has taken its fold)."""

    KIND: ClassVar[str] = "started"
    pid: int
    at: float
    """``time.time()`` in the fold."""


@dataclass(frozen=True, slots=True)
class Ready:
    """A warm spare has imported its preloads and waits for its fold."""

    KIND: ClassVar[str] = "ready"
    pid: int
    at: float


@dataclass(frozen=True, slots=True)
class PreloadError:
    """A warm spare could not import one of its preloads (the fold imports it itself)."""

    KIND: ClassVar[str] = "preload_error"
    module: str
    error: str
    """``"<type>: <message>"`` of the import's exception."""


@dataclass(frozen=True, slots=True)
class Report:
    """Intermediate metrics of ``ctx.report``, already plain (see ``FoldContext.report``)."""

    KIND: ClassVar[str] = "report"
    values: dict[str, Plain]
    at: float


@dataclass(frozen=True, slots=True)
class Result:
    """The fold's outcome: its last message."""

    KIND: ClassVar[str] = "result"
    outcome: ChildOutcome


@dataclass(frozen=True, slots=True)
class Bad:
    """Not a fold's message: what the orchestrator's reader makes of anything else a fold
    wrote (garbage, a refused global, a wrong shape). The rest of that pipe is dropped."""

    KIND: ClassVar[str] = "bad"
    reason: str
    """Why, in words that follow "the fold's process ..." (e.g. "it sent a frame ...")."""


FoldMessage = Union[Started, Ready, PreloadError, Report, Result]
"""What a fold sends."""
Message = Union[Started, Ready, PreloadError, Report, Result, Bad]
"""What the orchestrator reads: a fold's message, checked, or :class:`Bad`."""

FOLD_MESSAGES: tuple[type[FoldMessage], ...] = (Started, Ready, PreloadError, Report, Result)

MESSAGE_SHAPES = {
    "started": "('started', pid: int, time: float)",
    "ready": "('ready', pid: int, time: float)",
    "preload_error": "('preload_error', module: str, error: str)",
    "report": "('report', {name: int | float | str | bool | None}, time: float)",
    "result": "('result', ChildOutcome)",
}
"""Every message a fold may send, as it travels on the pipe (and as the reasons of bad
ones describe it)."""


def as_tuple(message: FoldMessage) -> tuple[object, ...]:
    """The form ``message`` travels in: ``(tag, *fields)``, fields in declaration order
    (not ``dataclasses.astuple``, which would take the outcome apart too)."""
    return (message.KIND, *(getattr(message, f.name) for f in fields(message)))
