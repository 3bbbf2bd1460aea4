"""The result pipe is untrusted: whatever a fold writes on it, the orchestrator gets
either well-formed typed messages or one ``Bad``, and never raises or imports. (The
framing on its own: ``test_framing.py``.)"""

from __future__ import annotations

import json
import math
import sqlite3
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import foldrunner
from conftest import base_spec
from foldrunner.child.context import FoldContext
from foldrunner.wire.framing import MAX_FRAME_SIZE, encode_frame, encode_message
from foldrunner.wire.messages import (
    FOLD_MESSAGES,
    MESSAGE_SHAPES,
    Bad,
    PreloadError,
    Ready,
    Report,
    Result,
    Started,
    as_tuple,
)
from foldrunner.wire.outcome import ChildOutcome, Status
from wire_pipe import frame, only_bad, pipe_messages

pytestmark = pytest.mark.timeout(60)

GOOD = Started(1234, 1.5)


# ---------------------------------------------------------------- the typed messages
def test_every_message_is_a_frozen_dataclass_with_its_own_tag():
    kinds = [cls.KIND for cls in FOLD_MESSAGES]
    assert sorted(kinds) == sorted(MESSAGE_SHAPES) and Bad.KIND not in kinds
    m = Started(1, 2.0)
    with pytest.raises(AttributeError):
        m.pid = 3  # type: ignore[misc]
    assert as_tuple(m) == ("started", 1, 2.0)
    assert as_tuple(PreloadError("tf", "ImportError: x")) == ("preload_error", "tf", "ImportError: x")
    outcome = ChildOutcome(status=Status.OK)
    assert as_tuple(Result(outcome))[1] is outcome  # not taken apart


def test_a_pickled_message_class_is_refused_like_any_other_global():
    # the dataclasses never travel themselves: a fold that pickles one is refused by name
    why = only_bad(pipe_messages(encode_frame(Started(1, 1.0))))
    assert "foldrunner.wire.messages.Started" in why and "could not be unpickled" in why


# ---------------------------------------------------------------- shapes
BAD_SHAPES = [
    (("result",), "it sent a message of an unexpected shape: tuple of 1 item(s) starting with 'result'"),
    (42, "it sent a message of an unexpected shape: int"),
    ((), "unexpected shape: tuple of 0 item(s)"),
    (("report", "x"), "unexpected shape: tuple of 2 item(s) starting with 'report'"),
    (("hello", 1), "starting with 'hello'"),
    ([("result", ChildOutcome(status=Status.OK))], "unexpected shape: list"),
    (("report", {"loss": [1, 2]}, 1.0), "'loss' is a list"),
    (("report", {3: 1.0}, 1.0), "malformed 'report'"),
    (("report", {"loss": 1.0}, "now"), "malformed 'report'"),
    (("started", "1234", 1.0), "malformed 'started'"),
    (("started", True, 1.0), "malformed 'started'"),
    (("ready", 1, None), "malformed 'ready'"),
    (("preload_error", 1, 2), "malformed 'preload_error'"),
    (("result", {"status": "ok"}), "malformed 'result'"),
    (("result", ChildOutcome(status="ok")), "status"),  # type: ignore[arg-type]
    (("result", ChildOutcome(status=Status.TIMEOUT)), "status"),
    (("result", ChildOutcome(status=Status.OK, metrics=[1])), "metrics"),  # type: ignore[arg-type]
    (("result", ChildOutcome(status=Status.OK, metrics={"a": {"b": 1}})), "'a' is a dict"),
    (("result", ChildOutcome(status=Status.OK, metrics={1: 2.0})), "metrics"),  # type: ignore[dict-item]
    (("result", ChildOutcome(status=Status.ERROR, error=3)), "error"),  # type: ignore[arg-type]
    (("result", ChildOutcome(status=Status.OK, maxrss_kb=1.5)), "maxrss_kb"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("message,reason", BAD_SHAPES, ids=[repr(m)[:40] for m, _ in BAD_SHAPES])
def test_each_bad_shape_is_one_bad_message(message, reason):
    why = only_bad(pipe_messages(encode_frame(message) + encode_message(GOOD)))
    assert reason in why, why


def test_an_outcome_with_unknown_fields_is_bad():
    o = ChildOutcome(status=Status.OK)
    o.extra = 1  # type: ignore[attr-defined]
    assert "extra" in only_bad(pipe_messages(encode_frame(("result", o))))


# ---------------------------------------------------------------- refused globals
def test_a_numpy_scalar_is_refused_by_name():
    data = encode_frame(("report", {"loss": np.float64(0.5)}, 1.0))
    why = only_bad(pipe_messages(data))
    assert "numpy" in why and "could not be unpickled" in why


def test_a_class_of_an_unimported_module_is_refused_without_importing_it(tmp_path, monkeypatch):
    name = "foldrunner_never_imported_mod"
    (tmp_path / f"{name}.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # importable: only the unpickler refuses it
    assert name not in sys.modules
    # ("result", Thing()) written by hand: the class is never defined here
    payload = (b"\x80\x04\x8c\x06result\x8c" + bytes([len(name)]) + name.encode()
               + b"\x8c\x05Thing\x93)\x81\x86.")
    why = only_bad(pipe_messages(frame(payload)))
    assert f"{name}.Thing" in why
    assert name not in sys.modules


def test_os_system_is_refused_and_never_called(tmp_path):
    target = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {target}'\ntR.".encode()
    why = only_bad(pipe_messages(frame(payload)))
    assert "os.system" in why
    assert not target.exists()


def test_a_pickle_cannot_change_the_orchestrators_status_members():
    # Status('ok'), then BUILD {'_value_': 'hacked'}: would rewrite the shared Status.OK
    payload = (b"\x80\x02cfoldrunner.wire.outcome\nStatus\nX\x02\x00\x00\x00ok\x85R"
               b"}X\x07\x00\x00\x00_value_X\x06\x00\x00\x00hackeds"
               b"b.")
    try:
        messages = pipe_messages(frame(payload))
        assert Status.OK.value == "ok" and Status.OK._value_ == "ok"
        only_bad(messages)
    finally:
        vars(Status.OK)["_value_"] = "ok"


# ---------------------------------------------------------------- what is good stays good
def test_valid_messages_round_trip():
    metrics = {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "yes": True, "no": False,
               "none": None, "s": "text", "big": 10**30, "blob": "x" * 3_000_000}
    outcome = ChildOutcome(status=Status.OK, metrics=metrics, started_at=1.0, ended_at=2.5,
                           maxrss_kb=1000)
    error = ChildOutcome(status=Status.ERROR, error_type="ValueError", error="boom",
                         traceback="Traceback...", memory_error=True)
    sent = [
        Started(99, 1.0),
        Ready(98, 2.0),
        PreloadError("tensorflow", "ImportError: no"),
        Report({"epoch": 3, "loss": math.nan, "flag": True, "note": "ok", "none": None}, 3.0),
        Result(outcome),
        Result(error),
    ]
    data = b"".join(encode_message(m) for m in sent)
    assert len(data) < MAX_FRAME_SIZE
    got = pipe_messages(data)
    assert len(got) == len(sent)
    for g, s in zip(got[:4], sent[:4]):
        assert type(g) is type(s) and repr(g) == repr(s)  # nan == nan in repr
    for g, s in zip(got[4:], sent[4:]):
        assert isinstance(g, Result) and isinstance(s, Result)
        assert type(g.outcome) is ChildOutcome and g.outcome is not s.outcome  # rebuilt
        assert g.outcome.status is s.outcome.status
        assert repr(g.outcome) == repr(s.outcome)


def test_an_int_time_becomes_a_float():
    # a fold may send times as ints (hand-written tuples): they are checked and made floats
    (m,) = pipe_messages(encode_frame(("report", {"a": 1}, 5)))
    assert m == Report({"a": 1}, 5.0) and type(m.at) is float


# ---------------------------------------------------------------- ctx.report in the child
class _Tensor0d:
    """Looks like a TensorFlow eager tensor of shape ()."""

    shape = ()

    def numpy(self):
        return np.float32(0.125)


class _Torch0d:
    """Looks like a torch tensor of shape ()."""

    shape = ()

    def item(self):
        return 7


class _Floaty:
    def __float__(self):
        return 2.5


class _Opaque:
    def __str__(self):
        return "opaque"


class _Unprintable:
    def __str__(self):
        raise RuntimeError("no")


def test_report_turns_every_value_into_a_plain_one():
    sent: list[Any] = []
    ctx = FoldContext(params={}, trial=0, fold=0, folds=1, replicate=0, seed=0, attempt=1,
                      gpu=None, run_dir=Path("."), fold_id="t0-r0-f0", log_path=Path("x"),
                      _send=sent.append)
    ctx.report(
        np_float=np.float32(0.5), np_int=np.int64(4), np_bool=np.bool_(True), zero_d=np.array(2.0),
        tf=_Tensor0d(), torch=_Torch0d(), floaty=_Floaty(), dec=Decimal("1.25"), obj=_Opaque(),
        arr=np.arange(3), lst=[1, 2], long="y" * 1000, none=None, flag=False, n=3, text="hi",
        cplx=1 + 2j, bad=_Unprintable(),
    )
    (msg,) = sent
    assert isinstance(msg, Report) and isinstance(msg.at, float)
    values = msg.values
    assert values["np_float"] == 0.5 and type(values["np_float"]) is float
    assert values["np_int"] == 4 and type(values["np_int"]) is int
    assert values["np_bool"] is True
    assert values["zero_d"] == 2.0 and type(values["zero_d"]) is float
    assert values["tf"] == 0.125 and type(values["tf"]) is float
    assert values["torch"] == 7
    assert values["floaty"] == 2.5 and values["dec"] == 1.25
    assert values["obj"] == "opaque"
    assert values["arr"] == "[0 1 2]" and values["lst"] == "[1, 2]"
    assert values["none"] is None and values["flag"] is False and values["n"] == 3
    assert values["text"] == "hi" and values["cplx"] == "(1+2j)"
    assert len(values["long"]) <= 200
    assert "_Unprintable" in values["bad"]
    assert all(type(v) in (int, float, str, bool, type(None)) for v in values.values())
    # and so the message passes the orchestrator's reader
    assert pipe_messages(encode_message(msg)) == [msg]


# ---------------------------------------------------------------- through real runs
def test_a_fold_that_writes_a_bad_message_is_crashed_and_the_run_goes_on(tmp_path):
    cases = ["ok", "bad_shape", "bad_garbage", "bad_oversize", "bad_numpy"]
    spec = base_spec(tmp_path, entrypoint="wire_folds:train", search={"grid": {"case": cases}},
                     resources={"workers": 3}, retry={"attempts": 1})
    df = foldrunner.run(spec).set_index("param_case")
    assert list(df.loc["ok", ["status", "error", "metric_acc"]]) == ["ok", "", 1.0]
    expected = {
        "bad_shape": "unexpected shape: tuple of 1 item(s) starting with 'result'",
        "bad_garbage": "could not be unpickled",
        "bad_oversize": str(2**60),
        "bad_numpy": "numpy",
    }
    for case, text in expected.items():
        row = df.loc[case]
        assert row["status"] == "crashed", (case, row["error"])
        assert text in row["error"], (case, row["error"])
        assert row["attempts"] == 1


def test_reports_of_a_real_fold_are_recorded_as_plain_values(tmp_path):
    spec = base_spec(tmp_path, entrypoint="wire_folds:train", params={"case": "report"})
    df = foldrunner.run(spec)
    assert df.iloc[0]["status"] == "ok", df.iloc[0]["error"]
    with sqlite3.connect(tmp_path / "run" / "journal.sqlite") as db:
        (text,) = db.execute("SELECT report FROM attempts WHERE fold_id = 't0-r0-f0'").fetchone()
    report = json.loads(text)
    long = report.pop("long")
    assert long.startswith("LLL") and len(long) <= 200
    assert report == {"np_float": 0.25, "zero_d": 3, "np_bool": True, "obj": "opaque thing",
                      "dec": 1.5, "flag": False, "none": None, "text": "hi"}
