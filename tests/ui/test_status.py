"""``foldrunner status`` and ``foldrunner logs`` (a live run read from outside), and the
live view: a real run in a subprocess, journals written by hand, LiveView driven directly."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from conftest import FOLDS, base_spec
from foldrunner.engine.events import AttemptStart
from foldrunner.errors import UsageError
from foldrunner.gpu.inventory import Slot
from foldrunner.store.journal import Journal
from foldrunner.ui.live import LiveView, PlainLines, make_printer
from foldrunner.wire.outcome import AttemptResult, Status
from foldrunner.store.paths import RunPaths
from foldrunner.config.plan import Fold, build_plan
from foldrunner.config.spec import load_spec
from foldrunner.ui.format import clock
from foldrunner.ui.logs import fold_log, follow, resolve_log
from foldrunner.ui.status import read_state, run_liveness, run_status

pytestmark = pytest.mark.timeout(60)


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "foldrunner", *args], capture_output=True, text=True, timeout=timeout,
    )


def wait_for(check, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def end_process(p: subprocess.Popen[str] | None) -> None:
    """SIGINT (the run ends its folds), then SIGKILL: leave nothing behind."""
    if p is None or p.poll() is not None:
        return
    p.send_signal(signal.SIGINT)
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


# -- a real run, looked at from outside while it is live ------------------------------
SLOW_SPEC = f"""\
name: statustest
entrypoint: slow:train
workdir: {FOLDS}
params:
  seconds: 40
cv:
  folds: 2
resources:
  gpus: none
  workers: 2
limits:
  timeout: 50s
  grace: 1s
retry:
  attempts: 1
  backoff: 0
"""


def test_status_and_logs_of_a_live_run(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SLOW_SPEC)
    run_dir = tmp_path / "run"
    run = follower = None
    try:
        with open(tmp_path / "run.out", "w") as out:
            run = subprocess.Popen(
                [sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir", str(run_dir)],
                stdout=out, stderr=subprocess.STDOUT, text=True,
            )

        def both_reported():
            if not (run_dir / "journal.sqlite").exists():
                return None
            r = cli("status", str(run_dir))
            return r if r.returncode == 0 and r.stdout.count("epoch=1 loss=0.5") == 2 else None

        r = wait_for(both_reported, 30, "both folds to report")
        assert f"state: live (orchestrator pid {run.pid} is running)" in r.stdout, r.stdout
        assert "folds: 2 in all: 2 running" in r.stdout
        for fid in ("t0-r0-f0", "t0-r0-f1"):
            (line,) = [ln for ln in r.stdout.splitlines() if ln.strip().startswith(fid)]
            assert re.search(rf"{fid}\s+1\s+-\s+\d+\s+\d+:\d\d\s+epoch=1 loss=0.5 \(\d+:\d\d ago\)", line), line

        r = cli("logs", str(run_dir), "t0-r0-f0")
        assert r.returncode == 0, r.stderr
        assert "hello from t0-r0-f0" in r.stdout and "warning from t0-r0-f0" in r.stdout
        assert "bye" not in r.stdout and "t0-r0-f1" not in r.stdout

        follower = subprocess.Popen(
            [sys.executable, "-m", "foldrunner", "logs", str(run_dir), "t0-r0-f1", "--follow"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(0.5)
        assert follower.poll() is None  # the fold still runs: it keeps following
        (run_dir / "release").touch()
        followed, err = follower.communicate(timeout=20)  # ends on its own when the fold ends
        assert follower.returncode == 0, err
        assert followed.splitlines() == ["hello from t0-r0-f1", "warning from t0-r0-f1", "bye from t0-r0-f1"]

        assert run.wait(30) == 0, (tmp_path / "run.out").read_text()
        r = cli("status", str(run_dir))
        assert r.returncode == 0, r.stderr
        assert "state: not live" in r.stdout
        assert "folds: 2 in all: 2 ok" in r.stdout
        assert "running" not in r.stdout

        r = cli("logs", str(run_dir), "t0-r0-f9")
        assert r.returncode == 2
        assert "no fold 't0-r0-f9'" in r.stderr and "t0-r0-f0, t0-r0-f1" in r.stderr
        r = cli("logs", str(run_dir), "t0-r0-f0", "--attempt", "3")
        assert r.returncode == 2 and "its attempts are 1" in r.stderr
    finally:
        end_process(follower)
        end_process(run)


# -- liveness from run.lock -----------------------------------------------------------
def _ended_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("case", ["missing", "empty", "garbage", "ours", "ended", "reused"])
def test_liveness_from_run_lock(tmp_path, case):
    lock = RunPaths(tmp_path).lock
    me = os.getpid()
    if case == "empty":
        lock.write_text("")
    elif case == "garbage":
        lock.write_text("not a pid\n")
    elif case in ("ours", "reused"):
        lock.write_text(f"{me}\n")
    elif case == "ended":
        lock.write_text(str(_ended_pid()))
    if case == "reused":  # the file was written long before this process started
        t = psutil.Process(me).create_time() - 3600
        os.utime(lock, (t, t))
    lv = run_liveness(tmp_path)
    assert lv.live is (case == "ours"), lv
    assert (lv.pid == me) is (case in ("ours", "reused"))
    expected = {
        "missing": "no run.lock", "empty": "run.lock is empty", "garbage": "not a pid",
        "ours": f"orchestrator pid {me} is running", "ended": "has ended",
        "reused": "now another process",
    }[case]
    assert expected in lv.why


# -- status of a journal written by hand ----------------------------------------------
def make_run(tmp_path: Path, folds: int = 5, **sections) -> tuple[RunPaths, list[Fold]]:
    spec = load_spec(base_spec(tmp_path, cv={"folds": folds}, **sections))
    plan = build_plan(spec)
    paths = RunPaths(tmp_path / "run")
    paths.make()
    paths.spec.write_text(spec.to_yaml())
    with Journal(paths.journal) as j:
        j.initialise(run_id="r1", spec_yaml=spec.to_yaml(), plan=plan, name=spec.name)
    return paths, list(plan.folds)


def result(fold_id: str, attempt: int, status: Status, **kw) -> AttemptResult:
    now = time.time()
    return AttemptResult(fold_id=fold_id, attempt=attempt, status=status, started_at=now - 5,
                         ended_at=now, duration_s=5.0, **kw)


def fill_journal(paths: RunPaths, folds: list[Fold]) -> None:
    """f0 ok; f1 running with a report; f2 timed out once (retry left); f3 error; f4 pending."""
    now = time.time()
    with Journal(paths.journal) as j:
        j.end_attempt(result(folds[0].fold_id, 1, Status.OK, metrics={"acc": 0.9}))
        j.start_attempt(folds[1].fold_id, 1, started_at=now - 65, pid=4242, pid_started_at=None,
                        gpu=1, log_path=str(paths.log(folds[1].fold_id, 1)))
        j.set_report(folds[1].fold_id, 1, {"epoch": 3, "loss": 0.123456}, now - 2)
        j.end_attempt(result(folds[2].fold_id, 1, Status.TIMEOUT, error="timed out"))
        j.end_attempt(result(folds[3].fold_id, 1, Status.ERROR, error="ValueError: x"))


def test_status_of_a_live_run_dir(tmp_path):
    paths, folds = make_run(tmp_path)
    fill_journal(paths, folds)
    paths.lock.write_text(f"{os.getpid()}\n")  # we play the orchestrator
    text = run_status(paths.root)
    assert f"state: live (orchestrator pid {os.getpid()} is running)" in text
    assert "folds: 5 in all: 1 ok, 1 running, 1 retrying, 1 error, 1 pending" in text
    assert re.search(r"t0-r0-f1\s+1\s+1\s+4242\s+1:0[5-9]\s+epoch=3 loss=0.1235 \(0:0\d ago\)", text), text
    state = read_state(paths.root)
    assert state.running[0].report == {"epoch": 3, "loss": 0.123456}


def test_status_after_the_orchestrator_died(tmp_path):
    paths, folds = make_run(tmp_path)
    fill_journal(paths, folds)
    paths.lock.write_text(str(_ended_pid()))  # kill -9 leaves the pid in the file
    text = run_status(paths.root)
    assert "state: not live (orchestrator pid" in text and "has ended" in text
    # no retry will come: the timeout is final until --resume; the running one was interrupted
    assert "folds: 5 in all: 1 ok, 1 error, 1 timeout, 1 interrupted, 1 pending" in text
    assert "left running by an orchestrator that is gone" in text and "t0-r0-f1" in text


def test_status_of_a_fresh_run_and_of_no_run(tmp_path):
    paths, _ = make_run(tmp_path, folds=3)
    assert run_status(paths.root).splitlines()[1:] == [
        "state: not live (no run.lock: no run has held this directory)",
        "folds: 3 in all: 3 pending",
    ]
    with pytest.raises(UsageError, match="not a foldrunner run directory"):
        run_status(tmp_path / "nothing")


def test_status_reads_a_journal_that_is_being_written(tmp_path):
    """A reader never blocks the writer and always sees a whole transaction."""
    paths, folds = make_run(tmp_path, folds=40)
    stop = threading.Event()

    def write() -> None:
        with Journal(paths.journal) as j:
            for f in folds:
                if stop.is_set():
                    return
                j.end_attempt(result(f.fold_id, 1, Status.OK))

    writer = threading.Thread(target=write)
    writer.start()
    try:
        seen = []
        while writer.is_alive():
            state = read_state(paths.root)
            assert sum(state.counts.values()) == 40
            seen.append(state.counts.get("ok", 0))
        assert seen == sorted(seen)
    finally:
        stop.set()
        writer.join()
    assert read_state(paths.root).counts == {"ok": 40}


# -- logs -----------------------------------------------------------------------------
def test_fold_log_picks_the_latest_attempt_or_the_one_asked(tmp_path):
    paths, folds = make_run(tmp_path, folds=3)
    fid = folds[0].fold_id
    with Journal(paths.journal) as j:
        j.end_attempt(result(fid, 1, Status.TIMEOUT, log_path=str(paths.log(fid, 1))))
        j.end_attempt(result(fid, 2, Status.OK, log_path=str(paths.log(fid, 2))))
    assert fold_log(paths.root, fid) == paths.log(fid, 2)
    assert fold_log(paths.root, fid, attempt=1) == paths.log(fid, 1)
    assert resolve_log(paths.root, fid) == (2, paths.log(fid, 2))
    with pytest.raises(UsageError, match=r"t0-r0-f0 has no attempt 3: its attempts are 1, 2"):
        fold_log(paths.root, fid, attempt=3)
    with pytest.raises(UsageError, match=r"no fold 't0-r0-f7' in .*: its folds are t0-r0-f0, t0-r0-f1, t0-r0-f2$"):
        fold_log(paths.root, "t0-r0-f7")
    many, _ = make_run(tmp_path / "many", folds=30)
    with pytest.raises(UsageError, match=r"t0-r0-f0, .*, \.\.\., t0-r0-f28, t0-r0-f29 \(30 in all\); did you mean t0-r0-f3\?"):
        fold_log(many.root, "t0-r0-f3x")
    with pytest.raises(UsageError, match="t0-r0-f1 has not started yet"):
        fold_log(paths.root, "t0-r0-f1")


def test_follow_tails_until_stopped_and_drains(tmp_path):
    path = tmp_path / "x.log"
    done = threading.Event()

    def write() -> None:
        time.sleep(0.2)  # the file does not exist yet when follow starts
        with open(path, "ab", buffering=0) as f:
            for i in range(5):
                f.write(f"line {i}\n".encode())
                time.sleep(0.05)
            f.write("é split: ".encode()[:1])  # half a UTF-8 character ...
            time.sleep(0.1)
            f.write("é split: ".encode()[1:] + b"last\n")  # ... and the rest
        done.set()  # everything is written before stop() turns true

    t = threading.Thread(target=write)
    t.start()
    try:
        chunks = list(follow(path, done.is_set, poll=0.02))
    finally:
        t.join()
    assert "".join(chunks) == "".join(f"line {i}\n" for i in range(5)) + "é split: last\n"
    assert len(chunks) > 1  # it streamed, it did not wait for the end


def test_follow_restarts_a_truncated_file_and_ends_on_a_missing_one(tmp_path):
    path = tmp_path / "x.log"
    assert list(follow(path, lambda: True)) == []
    path.write_text("old old old\n")
    stop = threading.Event()
    got: list[str] = []

    def read() -> None:
        got.extend(follow(path, stop.is_set, poll=0.02))

    t = threading.Thread(target=read)
    t.start()
    wait_for(lambda: got, 5, "the first read")
    path.write_text("new\n")  # truncated and rewritten
    time.sleep(0.2)
    stop.set()
    t.join(5)
    assert "".join(got) == "old old old\nnew\n"


# -- the live view --------------------------------------------------------------------
def fold(i: int) -> Fold:
    return Fold(index=i, trial=0, replicate=0, fold=i, folds=4, seed=0, params={"lr": 0.1})


def started(f: Fold, attempt: int, slot: Slot) -> AttemptStart:
    return AttemptStart(fold=f, attempt=attempt, slot=slot, pid=0, pid_started_at=None, host="h",
                        started_at=time.time(), log_path="")


def ended(i: int, status: Status, attempt: int = 1, **kw) -> AttemptResult:
    return AttemptResult(fold_id=fold(i).fold_id, attempt=attempt, status=status, started_at=0.0,
                         ended_at=1.0, duration_s=1.5, **kw)


def term(width: int = 100, height: int = 25) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=width, height=height, color_system="truecolor"), buf


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_live_view_shows_running_folds_counts_and_keeps_the_last_frame():
    console, buf = term()
    view = LiveView(console)
    with view.start(4):
        view.attempt_started(started(fold(0), 1, Slot(0, gpu=1)))
        view.attempt_started(started(fold(1), 1, Slot(1, gpu=None)))
        view.attempt_started(started(fold(2), 1, Slot(2, gpu=0)))
        view.report(fold(0), 1, {"epoch": 2, "loss": 0.123456}, time.time())
        view.attempt_ended(fold(2), ended(2, Status.TIMEOUT, gpu=0, error="timed out after 5s"), final=False)
        view.attempt_started(started(fold(2), 2, Slot(2, gpu=0)))
        view.attempt_ended(fold(2), ended(2, Status.OK, attempt=2, metrics={"acc": 0.9}), final=True)
        view.attempt_ended(fold(3), ended(3, Status.CRASHED, error="killed by SIGSEGV"), final=True)
        view.note("GPU 1 [2 folds] taken out")
        time.sleep(0.4)  # at least one redraw from the redraw thread
    out = plain(buf.getvalue())
    last = out[out.rindex("folds") - 60:]  # the final frame, left on the screen
    assert "2/4 folds" in last
    assert re.search(r"ok 1\s+error 0\s+timeout 0\s+crashed 1\s+memory 0\s+cancelled 0\s+running 2\s+retried 1", last), last
    rows = {ln.split()[0]: ln.split() for ln in last.splitlines() if ln.strip().startswith("t0-")}
    assert rows["t0-r0-f0"][1:3] == ["1", "1"] and rows["t0-r0-f0"][4:] == ["epoch=2", "loss=0.1235"]
    assert re.fullmatch(r"\d+:\d\d", rows["t0-r0-f0"][3])
    assert rows["t0-r0-f1"][1:3] == ["1", "-"] and rows["t0-r0-f1"][4:] == ["-"]
    assert "t0-r0-f2" not in rows and "t0-r0-f3" not in rows
    # failures are printed above the view; ok attempts are not
    assert "t0-r0-f2 attempt 1: timeout in 1.5s gpu 0: timed out after 5s; will retry" in out.replace("\n", "")
    assert "t0-r0-f3 attempt 1: crashed in 1.5s: killed by SIGSEGV" in out
    assert "foldrunner: GPU 1 [2 folds] taken out" in out  # no markup read into it
    assert "attempt 2: ok" not in out
    assert "\x1b[?25h" in buf.getvalue()  # the cursor is given back


def test_live_view_eta_and_the_summary_after_stop():
    import pandas as pd

    console, buf = term()
    view = LiveView(console).start(4, already_ok=1)
    try:
        view.attempt_started(started(fold(0), 1, Slot(0)))
        view.attempt_ended(fold(0), ended(0, Status.OK), final=True)
    finally:
        view.stop()
    df = pd.DataFrame({"status": ["ok", "ok", "error"]})
    df.attrs.update(planned=4, run_dir="runs/x")
    view.summary(df)
    view.table("trial  acc\n    0  0.9")
    out = plain(buf.getvalue())
    assert "2/4 folds" in out and "ok 2" in out and re.search(r"ETA \d+:\d\d", out)
    assert out.rstrip().endswith("done: 4 folds: 1 error, 2 ok, 1 not started; results in runs/x\ntrial  acc\n    0  0.9")


def test_live_view_redraws_at_most_four_times_a_second():
    console, buf = term()
    view = LiveView(console)
    with view.start(1000):
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < 1.0:
            view.attempt_started(started(fold(i), 1, Slot(0)))
            view.report(fold(i), 1, {"step": i}, time.time())
            i += 1
            time.sleep(0.001)
        frames = buf.getvalue().count("/1000 folds")
    assert i > 100
    assert 2 <= frames <= 7, frames  # the first frame, ~4 a second, the last frame


def test_live_view_lists_no_more_rows_than_the_terminal_has():
    console, buf = term(height=12)
    with LiveView(console).start(50) as view:
        for i in range(30):
            view.attempt_started(started(fold(i), 1, Slot(i)))
    last = plain(buf.getvalue()).split("0/50 folds")[-1]
    assert len([ln for ln in last.splitlines() if ln.startswith("t0-")]) == 6
    assert "... and 24 more running" in last


class Broken(io.StringIO):
    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def isatty(self) -> bool:
        return True


def test_live_view_never_raises_on_a_broken_stdout():
    saved = sys.stdout, sys.stderr
    view = LiveView(Console(file=Broken(), force_terminal=True, width=80))
    view.start(2)
    view.attempt_started(started(fold(0), 1, Slot(0)))
    view.report(fold(0), 1, {"loss": 1.0}, time.time())
    view.attempt_ended(fold(0), ended(0, Status.ERROR, error="x"), final=True)
    view.note("hello")
    view.table("t")
    view.stop()
    assert view.broken
    assert (sys.stdout, sys.stderr) == saved  # the redirection was undone


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty,term_name,expected", [
    (False, "xterm-256color", PlainLines), (True, "dumb", PlainLines),
    (True, "xterm-256color", LiveView), (True, "tmux-256color", LiveView),
])
def test_make_printer(monkeypatch, tty, term_name, expected):
    monkeypatch.setenv("TERM", term_name)
    stream = FakeTty() if tty else io.StringIO()
    printer = make_printer(stream)
    assert type(printer) is expected
    if isinstance(printer, LiveView):
        assert printer.console.file is stream


def test_make_printer_on_a_pipe_prints_plain_lines():
    r = subprocess.run(
        [sys.executable, "-c", "from foldrunner.ui.live import make_printer; print(type(make_printer()).__name__)"],
        capture_output=True, text=True, timeout=30, env={**os.environ, "TERM": "xterm"},
    )
    assert r.stdout.strip() == "PlainLines"


def test_live_view_honours_no_color(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("NO_COLOR", "1")
    stream = FakeTty()
    view = make_printer(stream)
    assert isinstance(view, LiveView)
    with view.start(2):
        view.attempt_ended(fold(0), ended(0, Status.ERROR, error="boom"), final=True)
    text = stream.getvalue()
    assert "error 1" in plain(text) and "boom" in text
    assert not re.search(r"\x1b\[[0-9;]*(3[0-9]|9[0-7]|38;)[0-9;]*m", text)  # no colour codes


def test_clock():
    assert [clock(s) for s in (0, 7.9, 182, 3902, -1)] == ["0:00", "0:07", "3:02", "1:05:02", "0:00"]
