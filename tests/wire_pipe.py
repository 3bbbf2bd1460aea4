"""Helpers of the wire tests: bytes through a real pipe, read as the orchestrator reads them."""

from __future__ import annotations

import os
import select
import struct
import threading
import time

import pytest

from foldrunner.wire.framing import read_messages
from foldrunner.wire.messages import Bad, Message

HEADER = struct.Struct("!Q")


def frame(payload: bytes) -> bytes:
    """A frame written by hand (not by foldrunner's encoder)."""
    return HEADER.pack(len(payload)) + payload


def write_all(fd: int, data: bytes, close: bool) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    if close:
        os.close(fd)


def pipe_messages(data: bytes) -> list[Message]:
    """Write ``data`` to a real pipe (then close it) and read every message off it."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    writer = threading.Thread(target=write_all, args=(w, data, True))
    writer.start()
    buf = bytearray()
    out: list[Message] = []
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            select.select([r], [], [], 1.0)
            messages, eof = read_messages(r, buf)
            out += messages
            if eof:
                break
        else:
            pytest.fail("the pipe never reached end of file")
        # a read after the end changes nothing
        again, eof = read_messages(r, buf)
        assert again == [] and eof
    finally:
        writer.join(10)
        os.close(r)
    return out


def only_bad(messages: list[Message]) -> str:
    """The reason of the one message, which must be :class:`Bad`."""
    assert len(messages) == 1, messages
    (m,) = messages
    assert isinstance(m, Bad) and isinstance(m.reason, str) and m.reason, messages
    return m.reason
