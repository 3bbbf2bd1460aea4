"""The bytes on a fold's pipes: length-prefixed pickles, and the reader of an untrusted one.

Every frame is an 8-byte big-endian length (:data:`FRAME_HEADER`), then that many bytes
of pickle. The orchestrator sends a spare its task this way (:func:`encode_frame`,
:func:`read_frame`); a fold sends its messages to the orchestrator this way
(:class:`Sender`, :func:`encode_message`), each message as the plain tuple of
:func:`foldrunner.wire.messages.as_tuple`.

What comes back from a fold is **untrusted**: it may write anything to its result pipe.
:func:`read_messages` therefore

* refuses a frame whose header announces more than :data:`MAX_FRAME_SIZE` bytes as soon
  as the header is read, without buffering it;
* decodes each payload with :func:`foldrunner.wire.decode.decode_message` (a restricted
  unpickler and shape checks), so that only well-formed messages leave it;
* never raises: anything else becomes one :class:`~foldrunner.wire.messages.Bad`, after
  which the rest of that pipe is read and dropped (a stream that went bad once is not
  trusted again; the engine makes that fold ``crashed`` with the reason as its error).

Imported by every fold's process: keep it free of heavy imports.
"""

from __future__ import annotations

import os
import pickle
import struct
import threading
from typing import Any

from foldrunner.wire.decode import decode_message
from foldrunner.wire.messages import Bad, FoldMessage, Message, as_tuple

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


class FrameTooLarge(ValueError):
    """A message would be a frame over :data:`MAX_FRAME_SIZE`."""


class BadFrame(ValueError):
    """What :func:`decode_frames` raises for a header over :data:`MAX_FRAME_SIZE`."""


# -- writing -----------------------------------------------------------------------------
def encode_frame(obj: Any) -> bytes:
    """A length-prefixed pickle, of any size (the orchestrator's tasks to its spares)."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME_HEADER.pack(len(payload)) + payload


def encode_message(message: FoldMessage) -> bytes:
    """The frame of a fold's message; raises :class:`FrameTooLarge` over the limit."""
    frame = encode_frame(as_tuple(message))
    size = len(frame) - FRAME_HEADER.size
    if size > MAX_FRAME_SIZE:
        raise FrameTooLarge(
            f"its {message.KIND!r} message is {size} bytes pickled, over the limit of "
            f"{MAX_FRAME_SIZE} bytes (foldrunner.wire.framing.MAX_FRAME_SIZE)"
        )
    return frame


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a blocking ``fd`` (raises ``OSError``, e.g. a broken pipe)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class Sender:
    """A fold's end of its result pipe: writes whole frames; safe from several threads."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def __call__(self, message: FoldMessage) -> None:
        self.send_bytes(encode_message(message))

    def send_bytes(self, frame: bytes) -> None:
        """Write one frame made by :func:`encode_message`."""
        with self.lock:
            write_all(self.fd, frame)


# -- reading a trusted pipe (the orchestrator's task to a spare) -------------------------
def read_frame(fd: int) -> bytes | None:
    """One frame's payload from a blocking pipe; None at end of file."""
    head = _read_exactly(fd, FRAME_HEADER.size)
    if head is None:
        return None
    (size,) = FRAME_HEADER.unpack(head)
    return _read_exactly(fd, size)


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# -- reading an untrusted pipe (a fold's result pipe) ------------------------------------
def _oversize(size: int) -> str:
    return (
        f"it sent a frame header announcing {size} bytes, over the limit of {MAX_FRAME_SIZE} "
        "bytes (foldrunner.wire.framing.MAX_FRAME_SIZE): garbage on its result pipe or a "
        "message too large; the rest of its result pipe was ignored"
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


def _poison(buf: bytearray, why: str) -> None:
    buf[:] = _POISON + why.encode("utf-8", "replace")


def _poisoned(buf: bytearray) -> str | None:
    if buf[: len(_POISON)] == _POISON:
        return bytes(buf[len(_POISON):]).decode("utf-8", "replace")
    return None


def read_messages(fd: int, buf: bytearray) -> tuple[list[Message], bool]:
    """Read what a non-blocking result pipe holds: ``(messages, at end of file)``.

    ``buf`` is the pipe's own buffer, kept by the caller between calls and otherwise
    opaque. Every message is well-formed (a result's outcome is a fresh
    :class:`~foldrunner.wire.outcome.ChildOutcome`) or :class:`Bad`. After a bad message,
    the rest of the pipe is read and dropped; each later call that reads more of it
    returns ``Bad`` again (the same reason). A frame cut short by the end of the pipe is
    bad. Never raises.
    """
    out: list[Message] = []
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
            message = decode_message(payload)
            out.append(message)
            if isinstance(message, Bad):
                why = message.reason
                break
        if why is None and split_why is not None:
            why = split_why
            out.append(Bad(why))
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
        out.append(Bad(why))
        _poison(buf, why)
    elif bad_before and dropped and why is not None:
        out.append(Bad(why))
    return out, eof
