"""`foldrunner report` and `foldrunner run --report`, end to end: real runs through the
CLI, the page opened in headless Chromium with the network blocked (tests/report/browser.py)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from browser import Browser, assert_rendered
from conftest import journal_rows

pytestmark = pytest.mark.timeout(240)  # a run, a browser and a big journal, on a loaded machine
HERE = Path(__file__).parent
ROOT = HERE.parent.parent

SPEC = f"""\
name: every-status
entrypoint: report_folds:train_fold
workdir: {HERE}
search:
  grid:
    mode: [good, better, error, crash, memory, stall, slow]
    lr: [0.1, 0.01]
cv: {{folds: 2}}
objective: {{metric: score, mode: max}}
resources: {{gpus: none, workers: 4, spares: false}}
limits: {{timeout: 60s, grace: 1s, stall: 1s}}
retry: {{attempts: 2, on: [crashed], backoff: 0s}}
env: {{SECRET_TOKEN: hunter2}}
"""
SLOW_TRIALS = {12, 13}  # mode: slow (reports until it is interrupted)
FOLDS = 28


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foldrunner", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


@dataclass
class EveryStatus:
    run_dir: Path
    rc: int
    stderr: str
    live_page: Path
    """`foldrunner report --output` of the run while its slow folds were running."""
    live_auto: str
    """RUN_DIR/report.html as `run --report` had written it by then."""


def _wait(what: str, cond, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def every_status(tmp_path_factory) -> EveryStatus:
    """A run in which every status happens: 8 ok, 4 error, 4 crashed (retried), 4 memory,
    4 timeout (stalled) and 4 cancelled (slow folds, interrupted once every other fold ended),
    run with --report; a live snapshot taken while the slow folds ran."""
    tmp = tmp_path_factory.mktemp("every")
    (tmp / "spec.yaml").write_text(SPEC)
    run_dir = tmp / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "foldrunner", "run", str(tmp / "spec.yaml"), "--run-dir", str(run_dir),
         "--report"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        start_new_session=True,
    )
    try:
        def only_slow_running() -> bool:
            rows = journal_rows(run_dir, "fold_id, attempt, status")
            running = {r[0] for r in rows if r[2] == "running"}
            ended = {r[0] for r in rows if r[2] != "running"} - running
            return len(running) == 4 and all(int(f[1:].split("-")[0]) in SLOW_TRIALS for f in running) \
                and len(ended) == FOLDS - 4

        _wait("the slow folds to be the only ones running", only_slow_running)
        _wait("run --report to write a page of the live run",
              lambda: (run_dir / "report.html").exists()
              and "running 4" in (run_dir / "report.html").read_text())
        live_auto = (run_dir / "report.html").read_text()
        live_page = tmp / "live.html"
        r = cli("report", str(run_dir), "--output", str(live_page))
        assert r.returncode == 0, r.stderr
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C does: the slow folds are cancelled
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return EveryStatus(run_dir, proc.returncode, err, live_page, live_auto)


@pytest.fixture(scope="module")
def browser():
    with Browser() as b:
        yield b


COUNTS = ["ok 8", "error 4", "timeout 4", "crashed 4", "memory 4", "cancelled 4"]


def test_a_run_with_every_status(every_status, browser, tmp_path):
    s = every_status
    assert s.rc == 130, s.stderr
    assert "Traceback" not in s.stderr
    # run --report wrote the final page when the run ended
    final = (s.run_dir / "report.html").read_text()
    assert "Live run" not in final and "cancelled 4" in final
    # and foldrunner report writes the same page anywhere
    out = tmp_path / "elsewhere" / "r.html"
    out.parent.mkdir()
    r = cli("report", str(s.run_dir), "--output", str(out))
    assert r.returncode == 0 and str(out) in r.stdout, r.stderr
    size = out.stat().st_size
    assert 3_000_000 < size < 8_000_000  # plotly.js inlined once (4.8 MB), the data small

    page = browser.open(out)
    assert_rendered(page, {"chart-spread", "chart-params", "chart-parcoords", "chart-curve-loss",
                           "chart-curve-acc", "chart-timeline", "chart-memory"})
    text = page.visible
    assert "every-status" in text
    for count in COUNTS:  # the header's status counts
        assert count in text, count
    assert "28 planned" in text
    for word in ("mode", "lr", "better", "good", "stall", "0.01"):  # the trials' params
        assert word in text, word
    for error in ("ValueError: bad input in t4-r0-f0", "MemoryError: no memory left in t8-r0-f1",
                  "killed by SIGKILL", "stalled: no report for 1s", "interrupted by SIGINT"):
        assert error in text, error  # the failures, each with its error
    assert "about to raise" in page.text  # the tail of a failed attempt's log
    assert "SECRET_TOKEN" in page.text and "hunter2" not in out.read_text()  # env redacted
    assert "none (CPU only)" in text and "foldrunner run" in text  # GPUs, how to reproduce


def test_ranked_trials_table(every_status):
    from foldrunner.report.data import read_run
    from foldrunner.report.page import trial_table

    t = trial_table(read_run(every_status.run_dir))
    assert t["trial"].tolist()[:4] == [2, 3, 0, 1]  # better 0.1, better 0.01, good 0.1, good 0.01
    assert t["rank"].tolist()[:5] == ["1", "2", "3", "4", "-"]
    assert t["score mean"].iloc[0] == pytest.approx(1.005)
    assert t["score std"].iloc[0] == pytest.approx(0.00707, rel=1e-2)
    assert t["folds ok"].tolist()[:4] == [2, 2, 2, 2]
    assert set(t["statuses"].iloc[4:]) == {"2 error", "2 crashed", "2 memory", "2 timeout", "2 cancelled"}


def test_the_report_of_a_live_run_is_a_snapshot_that_says_so(every_status, browser):
    page = browser.open(every_status.live_page)
    assert_rendered(page, {"chart-timeline", "chart-curve-loss"})
    assert "Live run: this is a snapshot" in page.visible
    assert "running 4" in page.visible and "ok 8" in page.visible
    assert "Live run: this is a snapshot" in every_status.live_auto


@pytest.mark.parametrize("what", ["empty", "missing", "file"])
def test_a_dir_that_is_not_a_run_dir_exits_2(tmp_path, what):
    from click.testing import CliRunner

    from foldrunner.ui.cli import main

    target = tmp_path / "x"
    if what == "empty":
        target.mkdir()
    elif what == "file":
        target.write_text("not a run")
    r = CliRunner().invoke(main, ["report", str(target)])
    assert r.exit_code == 2, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.output
    if what == "file":
        assert "is a file" in r.output
    else:
        assert f"{target} is not a foldrunner run directory: no journal.sqlite in it" in r.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == ([] if what == "missing" else ["x"])


def test_a_run_refused_before_it_began_writes_no_report(tmp_path):
    (tmp_path / "spec.yaml").write_text(SPEC.replace("report_folds:train_fold", "no_such_module:f"))
    r = cli("run", str(tmp_path / "spec.yaml"), "--run-dir", str(tmp_path / "run"), "--report")
    assert r.returncode == 2, r.stderr
    assert not (tmp_path / "run" / "report.html").exists()


def test_a_big_run_draws_with_webgl(browser, tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from bench_report import build_run
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    build_run(tmp_path / "big", folds=2200, reports=5, slots=8)  # past GL_POINTS attempts
    r = cli("report", str(tmp_path / "big"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "big" / "report.html"
    assert out.stat().st_size < 7_000_000
    page = browser.open(out)
    assert_rendered(page, {"chart-timeline", "chart-memory", "chart-parcoords"})
    gl = {c["id"] for c in page.charts if c["gl"]}
    assert {"chart-timeline", "chart-memory"} <= gl  # past GL_POINTS: scattergl
    assert "The best 100 of 220 trials" in page.visible
    db = sqlite3.connect(f"file:{tmp_path / 'big' / 'journal.sqlite'}?mode=ro", uri=True)
    assert db.execute("SELECT COUNT(*) FROM reports").fetchone()[0] > 10_000
    db.close()


def test_run_report_rebuilds_at_most_every_interval(every_status, tmp_path):
    from foldrunner.report.live import INTERVAL, LiveReport

    out = tmp_path / "r.html"
    live = LiveReport(every_status.run_dir, out)
    live.tick(time.monotonic())
    assert live.last_start == float("-inf")  # nothing to show before the run began
    live.run_started(FOLDS, 0)
    live.tick(time.monotonic())
    first = live.last_start
    assert first > 0 and not live.dirty  # a build started
    end = time.monotonic() + 1.0
    while time.monotonic() < end:  # folds end meanwhile: no second build so soon
        live.attempt_ended(None, None, True)  # type: ignore[arg-type]
        live.tick(time.monotonic())
        time.sleep(0.05)
    assert live.last_start == first and live.dirty
    live.finish()  # waits for the build, then writes the last page
    assert live.last_start > first and live.interval >= INTERVAL
    assert "cancelled 4" in out.read_text()


def test_a_run_that_has_not_started_a_fold_yet(tmp_path, browser):
    """What `run --report` writes as a run begins: every section says why it is empty."""
    from foldrunner.config.plan import build_plan
    from foldrunner.config.spec import load_spec
    from foldrunner.store.journal import Journal
    from foldrunner.store.paths import RunPaths

    spec = load_spec({"name": "fresh", "entrypoint": "m:f", "workdir": str(tmp_path), "cv": {"folds": 3}})
    paths = RunPaths(tmp_path / "run")
    paths.make()
    with Journal(paths.journal) as j:
        j.initialise(run_id="r", spec_yaml="name: fresh\n", plan=build_plan(spec), name="fresh")
    r = cli("report", str(paths.root))
    assert r.returncode == 0, r.stderr
    page = browser.open(paths.root / "report.html")
    assert page.drawn == "drawn" and page.errors == [] and page.charts == []
    for why in ("No fold has ended yet", "No attempt has started yet", "No attempt failed",
                "pending 3", "3 planned"):
        assert why in page.visible, why


OPTUNA_SPEC = """\
name: pruned-study
entrypoint: search_folds:synthetic
workdir: {folds}
search:
  optuna:
    trials: 14
    sampler: tpe
    seed: 3
    space:
      x: {{uniform: [0.0, 1.0]}}
    pruner: {{median: {{warmup_folds: 0, min_trials: 3}}}}
cv: {{folds: 4}}
objective: {{metric: score, mode: max}}
resources: {{gpus: none, workers: 2}}
limits: {{timeout: 30s, grace: 1s}}
"""


def test_an_adaptive_run_with_pruned_trials(browser, tmp_path):
    """`pruned` rows (never launched: attempts 0, no clocks) count in the header and the
    trials table and leave the timeline and the failures alone."""
    from conftest import FOLDS as FOLD_DIR

    (tmp_path / "spec.yaml").write_text(OPTUNA_SPEC.format(folds=FOLD_DIR))
    run_dir = tmp_path / "run"
    r = cli("run", str(tmp_path / "spec.yaml"), "--run-dir", str(run_dir), timeout=200)
    assert r.returncode == 0, r.stderr
    import pandas as pd

    df = pd.read_csv(run_dir / "results.csv")
    counts = df["status"].value_counts().to_dict()
    assert set(counts) == {"ok", "pruned"} and counts["pruned"] > 0, counts  # it pruned
    out = tmp_path / "r.html"
    r = cli("report", str(run_dir), "--output", str(out))
    assert r.returncode == 0, r.stderr
    page = browser.open(out)
    assert_rendered(page, {"chart-spread", "chart-timeline"})
    text = page.visible
    assert "pruned-study" in text
    assert f"pruned {counts['pruned']}" in text and f"ok {counts['ok']}" in text  # the header
    assert "x" in text  # the param
    assert "Traceback" not in page.text
    # complete trials ranked first, as `results --summary` does; pruned ones unranked
    from foldrunner.report.data import read_run
    from foldrunner.report.page import trial_table

    t = trial_table(read_run(run_dir))
    pruned = set(df.loc[df["status"] == "pruned", "trial"])
    complete = t[~t["trial"].isin(pruned)]
    assert list(t["rank"][: len(complete)]) == [str(i + 1) for i in range(len(complete))]
    assert set(t.loc[t["trial"].isin(pruned), "rank"]) == {"-"}


def test_an_output_in_a_missing_directory_exits_2_naming_it(every_status, tmp_path):
    out = tmp_path / "nowhere" / "r.html"
    r = cli("report", str(every_status.run_dir), "--output", str(out))
    assert r.returncode == 2, r.stderr
    assert f"cannot write the report to {out}: no directory {out.parent}" in r.stderr
    assert "Traceback" not in r.stderr and not out.parent.exists()
