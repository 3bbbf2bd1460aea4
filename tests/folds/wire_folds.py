"""Entry points that misbehave on the result pipe, chosen by params.case.

Each ``bad_*`` case writes one bad frame straight to the fold's result pipe (the fd of
``ctx._send``, a ``foldrunner.wire.framing.Sender``) and then returns a good result, which the
orchestrator must ignore: a fold whose stream went bad is ``crashed``.
"""

from __future__ import annotations

import os
import pickle
import struct
import time
from decimal import Decimal

import numpy as np

HEADER = struct.Struct("!Q")


class Opaque:
    """An arbitrary object: neither a number nor a string, from a module the
    orchestrator has not imported."""

    def __repr__(self) -> str:
        return "Opaque(repr)"

    def __str__(self) -> str:
        return "opaque thing"


class Long:
    def __str__(self) -> str:
        return "L" * 5000


def _frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def _write(ctx, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(ctx._send.fd, view):]


def train(ctx):
    case = ctx.params["case"]
    if case == "bad_shape":
        _write(ctx, _frame(pickle.dumps(("result",))))
    elif case == "bad_garbage":
        _write(ctx, _frame(b"\x00 this is no pickle"))
    elif case == "bad_oversize":
        _write(ctx, HEADER.pack(2**60) + b"x" * 1000)
    elif case == "bad_numpy":
        _write(ctx, _frame(pickle.dumps(("report", {"loss": np.float64(0.5)}, time.time()))))
    elif case == "report":
        ctx.report(
            np_float=np.float32(0.25), zero_d=np.array(3), np_bool=np.bool_(True),
            obj=Opaque(), long=Long(), dec=Decimal("1.5"), flag=False, none=None, text="hi",
        )
    elif case != "ok":
        raise AssertionError(f"unknown case {case}")
    return {"acc": 1.0}
