"""The framing on its own (``foldrunner.wire.framing``): frames over real pipes, cut
anywhere, garbage, oversize headers, a writer that never stops, several writing threads."""

from __future__ import annotations

import os
import pickle
import select
import subprocess
import sys
import threading
import time

import pytest

from foldrunner.wire import framing
from foldrunner.wire.framing import (
    BadFrame,
    FrameTooLarge,
    Sender,
    decode_frames,
    encode_frame,
    encode_message,
    read_frame,
    read_messages,
)
from foldrunner.wire.messages import Bad, Report, Result, Started
from foldrunner.wire.outcome import ChildOutcome, Status
from wire_pipe import HEADER, frame, only_bad, pipe_messages

pytestmark = pytest.mark.timeout(60)

GOOD = Started(1234, 1.5)


def test_garbage_bytes_are_bad_and_end_the_stream():
    # no frame at all: its "header" announces some absurd size
    why = only_bad(pipe_messages(b"this is no frame at all, just text" + encode_message(GOOD)))
    assert "header" in why and "announc" in why
    # a plausible header over bytes that are not a pickle: bad, and what follows is ignored
    why = only_bad(pipe_messages(frame(b"\x00 garbage \xff") + encode_message(GOOD)))
    assert "could not be unpickled" in why


def test_truncated_frame_is_bad_at_end_of_file():
    data = encode_message(GOOD) + HEADER.pack(100) + b"0123456789"
    messages = pipe_messages(data)
    assert messages[0] == GOOD
    why = only_bad(messages[1:])
    assert "10 of the 100" in why
    # cut inside the header itself
    why = only_bad(pipe_messages(HEADER.pack(100)[:5]))
    assert "inside a frame header (5 of its 8 bytes)" in why


def test_oversize_header_is_bad_at_once_and_the_rest_is_ignored():
    assert framing.MAX_FRAME_SIZE == 64 * 1024 * 1024
    r, w = os.pipe()
    os.set_blocking(r, False)
    try:
        os.write(w, encode_message(GOOD) + HEADER.pack(2**60) + b"x" * 1000)
        buf = bytearray()
        messages, eof = read_messages(r, buf)  # the writer is still open: nothing more comes
        assert not eof
        assert messages[0] == GOOD
        why = only_bad(messages[1:])
        assert str(2**60) in why and "limit" in why
        assert len(buf) < 4096  # nothing of it is kept
        os.write(w, encode_message(Result(ChildOutcome(status=Status.OK))))
        later, eof = read_messages(r, buf)
        # the result after it is dropped; the same reason is said again
        assert later == [Bad(why)], later
        os.close(w)
        w = -1
        last, eof = read_messages(r, buf)
        assert eof and last == []
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_a_fold_that_never_stops_writing_does_not_hold_the_reader():
    r, w = os.pipe()
    os.set_blocking(r, False)
    code = ("import os, struct\n"
            "os.write(1, struct.pack('!Q', 2**60))\n"
            "while True: os.write(1, b'x' * 65536)\n")
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=w)
    os.close(w)
    try:
        buf = bytearray()
        bad = []
        for _ in range(5):
            select.select([r], [], [], 5.0)
            t0 = time.monotonic()
            messages, eof = read_messages(r, buf)
            assert time.monotonic() - t0 < 5.0 and not eof
            bad += messages
            assert len(buf) < 4096  # dropped, not kept
        assert bad and all(isinstance(m, Bad) and "announcing" in m.reason for m in bad)
    finally:
        writer.kill()
        writer.wait(10)
        os.close(r)


def test_a_frame_just_over_the_limit_is_refused_while_writing_in_the_child():
    big = ChildOutcome(status=Status.OK, metrics={"blob": "x" * (framing.MAX_FRAME_SIZE + 10)})
    with pytest.raises(FrameTooLarge, match="'result' message .* over the limit"):
        encode_message(Result(big))


def test_frames_cut_at_every_byte_are_put_back_together():
    sent = [Started(7, 1.0), Report({"epoch": 1, "loss": 0.5}, 2.0),
            Result(ChildOutcome(status=Status.OK, metrics={"acc": 0.9}))]
    data = b"".join(encode_message(m) for m in sent)
    r, w = os.pipe()
    os.set_blocking(r, False)
    got: list = []
    buf = bytearray()
    try:
        for i in range(len(data)):  # one byte at a time, a read after each
            if i == len(data) - 1:
                assert got == sent[:-1]  # the last frame lacks its last byte: not yet
            os.write(w, data[i:i + 1])
            messages, eof = read_messages(r, buf)
            assert not eof
            got += messages
        os.close(w)
        w = -1
        rest, eof = read_messages(r, buf)
        assert eof and rest == [] and buf == bytearray()
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert got == sent
    assert all(type(g) is type(s) for g, s in zip(got, sent))


def test_the_pipe_carries_plain_tuples_not_foldrunners_classes():
    # the restricted unpickler never needs a class of ours but ChildOutcome and Status
    payload = encode_message(Started(1, 2.0))[HEADER.size:]
    assert pickle.loads(payload) == ("started", 1, 2.0)
    assert b"foldrunner" not in payload
    outcome = pickle.loads(encode_message(Result(ChildOutcome(status=Status.OK)))[HEADER.size:])
    assert outcome[0] == "result" and type(outcome[1]) is ChildOutcome


def test_a_spares_task_goes_through_a_blocking_pipe_whole():
    task = {"fold": "t0-r0-f0", "blob": b"\x00" * 300_000}  # over a pipe's capacity
    r, w = os.pipe()
    try:
        writer = threading.Thread(target=framing.write_all, args=(w, encode_frame(task)))
        writer.start()
        payload = read_frame(r)
        writer.join(10)
        assert payload is not None and pickle.loads(payload) == task
        os.write(w, encode_frame(task)[:100])  # a frame cut short, then the end
        os.close(w)
        w = -1
        assert read_frame(r) is None
        assert read_frame(r) is None  # at end of file: nothing more
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_decode_frames_takes_whole_frames_and_raises_at_an_oversize_header():
    buf = bytearray(encode_frame("a") + encode_frame("b") + encode_frame("c")[:5])
    assert [pickle.loads(p) for p in decode_frames(buf)] == ["a", "b"]
    assert len(buf) == 5  # the cut frame waits for the rest
    buf += encode_frame("c")[5:] + HEADER.pack(framing.MAX_FRAME_SIZE + 1)
    with pytest.raises(BadFrame, match="over the limit"):
        decode_frames(buf)


def test_frames_from_several_threads_never_interleave():
    # each frame is far over PIPE_BUF: unlocked writers would cut into each other's frames
    r, w = os.pipe()
    os.set_blocking(r, False)
    send = Sender(w)
    per_thread, threads = 20, 4
    big = "y" * 200_000

    def talk(n: int) -> None:
        try:
            for i in range(per_thread):
                send(Report({"thread": n, "i": i, "big": big}, float(i)))
        except BrokenPipeError:  # the reader gave up (the test failed)
            pass

    writers = [threading.Thread(target=talk, args=(n,)) for n in range(threads)]
    got: list = []
    buf = bytearray()
    try:
        for t in writers:
            t.start()
        deadline = time.monotonic() + 30
        while len(got) < per_thread * threads and time.monotonic() < deadline:
            select.select([r], [], [], 1.0)
            got += read_messages(r, buf)[0]
            assert not any(isinstance(m, Bad) for m in got), got[-1]
    finally:
        os.close(r)  # first: a writer still blocked on the full pipe gets EPIPE
        for t in writers:
            t.join(30)
        os.close(w)
    assert all(isinstance(m, Report) for m in got) and len(got) == per_thread * threads
    for n in range(threads):  # each thread's reports whole and in its order
        assert [m.values["i"] for m in got if m.values["thread"] == n] == list(range(per_thread))
