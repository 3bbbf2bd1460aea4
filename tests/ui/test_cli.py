"""The command line, end to end in real subprocesses: exit codes, messages, files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import FOLDS

pytestmark = pytest.mark.timeout(120)


def cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "foldrunner", *args], capture_output=True, text=True,
        cwd=cwd, timeout=timeout,
    )


def write_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = f"""\
name: clitest
entrypoint: flaky:train
workdir: {FOLDS}
search:
  grid:
    lr: [0.1, 0.01]
cv:
  folds: 2
resources:
  gpus: none
  workers: 2
limits:
  timeout: 30s
  grace: 1s
retry:
  attempts: 1
  backoff: 0
objective:
  metric: acc
  mode: max
"""

BAD_SPECS = {
    "unknown key": (GOOD.replace("  grace: 1s", "  grace: 1s\n  timout: 5m"), "limits.timout", 15),
    "wrong type": (GOOD.replace("folds: 2", "folds: two"), "cv.folds", 8),
    "bad duration": (GOOD.replace("timeout: 30s", "timeout: 5 minutes"), "limits.timeout", 13),
    "bad size": (GOOD.replace("  grace: 1s", "  grace: 1s\n  max_rss: 2 gigs"), "limits.max_rss", 15),
    "empty grid": (GOOD.replace("    lr: [0.1, 0.01]", "    lr: []"), "search.grid.lr", 6),
    "gpus no": (GOOD.replace("gpus: none", "gpus: no"), "resources.gpus", 10),
    "duplicate key": (GOOD.replace("  folds: 2", "  folds: 2\n  folds: 3"), "cv.folds", None),
    "bad name": (GOOD.replace("name: clitest", "name: 'my sweep!'"), "name", 1),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_spec_exits_2_with_one_clear_message(tmp_path, case):
    text, key, line = BAD_SPECS[case]
    spec = write_spec(tmp_path, text)
    r = cli("run", str(spec), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2, r.stderr
    assert key in r.stderr
    if line is not None:
        assert f"line {line}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "run").exists()  # nothing launched, nothing written
    # plan refuses it the same way
    p = cli("plan", str(spec))
    assert p.returncode == 2 and key in p.stderr


def test_alias_bomb_and_deep_nesting_and_huge_file(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi")
    )
    deep = "name: x\nentrypoint: m:f\nparams:\n  p: " + "[" * 200 + "]" * 200 + "\n"
    huge = GOOD + "#" + "x" * (2 * 1024 * 1024) + "\n"
    for name, text in (("bomb", bomb), ("deep", deep), ("huge", huge)):
        spec = write_spec(tmp_path, text, f"{name}.yaml")
        r = cli("run", str(spec), "--run-dir", str(tmp_path / name))
        assert r.returncode == 2, (name, r.stderr)
        assert "Traceback" not in r.stderr, name
        assert r.stderr.count("\n") <= 4, r.stderr
        assert not (tmp_path / name).exists()


@pytest.mark.parametrize(
    "entrypoint,expected",
    [
        ("no_such_module:train", "No module named 'no_such_module'"),
        ("preflight_cases:missing", "has no attribute 'missing'"),
        ("preflight_cases:not_callable", "is a int, not a callable"),
        ("raises_on_import:train", "RuntimeError: this module refuses to be imported"),
    ],
)
def test_unimportable_entrypoint_fails_preflight(tmp_path, entrypoint, expected):
    spec = write_spec(tmp_path, GOOD.replace("flaky:train", entrypoint))
    run_dir = tmp_path / "run"
    r = cli("run", str(spec), "--run-dir", str(run_dir))
    assert r.returncode == 2, r.stderr
    assert "entrypoint" in r.stderr and expected in r.stderr, r.stderr
    assert "Traceback (most recent call last)" not in r.stderr
    assert not (run_dir / "journal.sqlite").exists()
    assert sorted(p.name for p in (run_dir / "logs").iterdir()) == ["preflight.log"]


def test_run_results_summary_formats(tmp_path):
    spec = write_spec(tmp_path, GOOD)
    run_dir = tmp_path / "run"
    r = cli("run", str(spec), "--run-dir", str(run_dir))
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if " attempt 1: ok " in l]
    assert len(lines) == 4
    assert "\x1b[" not in r.stdout  # not a terminal: plain lines, no escape codes
    assert (run_dir / "results.csv").exists() and (run_dir / "spec.yaml").exists()
    resolved = yaml.safe_load((run_dir / "spec.yaml").read_text())
    assert resolved["name"] == "clitest"

    out = cli("results", str(run_dir), "--format", "json")
    rows = json.loads(out.stdout)
    assert [r["fold_id"] for r in rows] == ["t0-r0-f0", "t0-r0-f1", "t1-r0-f0", "t1-r0-f1"]
    assert {r["status"] for r in rows} == {"ok"}
    for col in ("trial", "replicate", "fold", "fold_id", "seed", "status", "attempts",
                "duration_s", "gpu", "peak_rss_mb", "peak_gpu_mb", "error", "param_lr",
                "metric_acc"):
        assert col in rows[0], col

    summ = json.loads(cli("results", str(run_dir), "--summary", "--format", "json").stdout)
    assert [s["trial"] for s in summ] == [0, 1]  # equal acc: stable order
    assert summ[0]["acc_mean"] == pytest.approx(0.505)
    assert summ[0]["folds_ok"] == 2 and summ[0]["folds_failed"] == 0

    csv_text = cli("results", str(run_dir), "--summary", "--format", "csv").stdout
    assert csv_text.splitlines()[0].startswith("rank,trial,param_lr")
    md = cli("results", str(run_dir), "--format", "markdown").stdout
    assert md.splitlines()[1].startswith("|--") or md.splitlines()[1].startswith("|:")

    # the run dir now holds a journal: a second run without --resume is refused
    again = cli("run", str(spec), "--run-dir", str(run_dir))
    assert again.returncode == 2 and "--resume" in again.stderr


def test_the_format_option_offers_every_format_of_render():
    from foldrunner.store.results import FORMATS
    from foldrunner.ui.cli import FORMATS as CLI_FORMATS

    assert tuple(CLI_FORMATS) == FORMATS


def test_failed_fold_exit_1_then_resume_runs_only_it(tmp_path):
    spec = write_spec(tmp_path, GOOD.replace("    lr: [0.1, 0.01]", "    lr: [0.1]"))
    run_dir = tmp_path / "run"
    (tmp_path / "fail-1").write_text("")
    r = cli("run", str(spec), "--run-dir", str(run_dir))
    assert r.returncode == 1
    assert "RuntimeError: flag fail-1 is set" in r.stdout
    (tmp_path / "fail-1").unlink()
    r2 = cli("run", str(spec), "--run-dir", str(run_dir), "--resume")
    assert r2.returncode == 0, r2.stderr + r2.stdout
    assert "t0-r0-f0" not in r2.stdout  # the ok fold did not run again
    rows = {r["fold_id"]: r for r in json.loads(cli("results", str(run_dir), "--format", "json").stdout)}
    assert rows["t0-r0-f0"]["attempts"] == 1 and rows["t0-r0-f1"]["attempts"] == 2
    assert rows["t0-r0-f1"]["status"] == "ok"

    # a changed plan is refused on resume
    spec2 = write_spec(tmp_path, GOOD, "other.yaml")
    r3 = cli("run", str(spec2), "--run-dir", str(run_dir), "--resume")
    assert r3.returncode == 2 and "differs from the journal" in r3.stderr


def test_plan_lists_folds_and_launches_nothing(tmp_path):
    spec = write_spec(tmp_path, GOOD)
    r = cli("plan", str(spec), "-o", "cv.folds=3", "--format", "csv")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "fold_id,trial,replicate,fold,seed,param_lr"
    assert len(lines) == 1 + 2 * 3
    assert not (tmp_path / "runs").exists()
    bad = cli("plan", str(spec), "-o", "cv.folds=zero")
    assert bad.returncode == 2 and "cv.folds" in bad.stderr


def start_and_wait_for_folds(spec: Path, run_dir: Path, n: int) -> subprocess.Popen:
    """Start `foldrunner run` in the background; return once n folds have started."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    logs = run_dir / "logs"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list(logs.glob("t*.log")) if logs.exists() else []) < n:
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_stops_cleanly_with_130_then_resume_finishes(tmp_path, sig):
    spec = write_spec(tmp_path, GOOD)
    run_dir = tmp_path / "run"
    (tmp_path / "hang").write_text("")
    proc = start_and_wait_for_folds(spec, run_dir, 2)
    time.sleep(0.3)
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 1.0 + 1.0  # grace 1s plus a second
    assert "--resume" in err and "Traceback" not in err
    rows = json.loads(cli("results", str(run_dir), "--format", "json").stdout)
    assert [r["status"] for r in rows] == ["cancelled", "cancelled"]  # 2 workers were busy
    assert all(f"interrupted by {sig.name}" in r["error"] for r in rows)

    (tmp_path / "hang").unlink()
    r = cli("run", str(spec), "--run-dir", str(run_dir), "--resume")
    assert r.returncode == 0, r.stderr + r.stdout
    rows = json.loads(cli("results", str(run_dir), "--format", "json").stdout)
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert sorted(r["attempts"] for r in rows) == [1, 1, 2, 2]  # cancelled ones ran again


def test_deadline_cancels_and_exits_1(tmp_path):
    spec = write_spec(tmp_path, GOOD)
    (tmp_path / "hang").write_text("")
    t0 = time.monotonic()
    r = cli("run", str(spec), "--run-dir", str(tmp_path / "run"), "--deadline", "1s")
    assert r.returncode == 1, r.stderr
    assert time.monotonic() - t0 < 10
    assert "past the run's deadline" in r.stdout
    assert "2 cancelled, 2 not started" in r.stdout


def test_a_second_sigint_ends_faster(tmp_path):
    """Folds that ignore SIGTERM, grace 20s: the second Ctrl-C kills them at once."""
    spec = write_spec(tmp_path, GOOD.replace("flaky:train", "matrix:train").replace(
        "grace: 1s", "grace: 20s").replace("    lr: [0.1, 0.01]", "    case: [hang_ignore_term]"))
    run_dir = tmp_path / "run"
    proc = start_and_wait_for_folds(spec, run_dir, 2)
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None  # still within grace: the folds ignore SIGTERM
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 3  # far less than the 20s grace
    rows = json.loads(cli("results", str(run_dir), "--format", "json").stdout)
    assert [r["status"] for r in rows] == ["cancelled", "cancelled"]


def test_ctrl_c_during_preflight_exits_130_and_leaves_nothing(tmp_path):
    spec = write_spec(tmp_path, GOOD.replace("flaky:train", "slow_import:train"))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (run_dir / "logs" / "preflight.log").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "interrupted before any fold started" in err and "Traceback" not in err
    assert not (run_dir / "journal.sqlite").exists()


def test_a_stop_never_waits_for_spares_importing_their_preloads(tmp_path):
    """Spares busy with a 30s import: SIGINT still ends the run within grace plus a second."""
    spec = write_spec(tmp_path, GOOD.replace("cv:\n  folds: 2", "cv:\n  folds: 4\npreload: [slow_import]"))
    run_dir = tmp_path / "run"
    (tmp_path / "hang").write_text("")
    proc = start_and_wait_for_folds(spec, run_dir, 2)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not list((run_dir / "logs").glob("spares/*.log")):
        time.sleep(0.05)
    assert list((run_dir / "logs").glob("spares/*.log")), "no spare was started"
    time.sleep(0.3)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 1.0 + 1.0  # grace 1s plus a second
