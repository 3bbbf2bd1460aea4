"""The Ray backend on a real two-node cluster on loopback (tests/ray_cluster.py): the
same results as the local backend, GPU pinning, folds on both nodes, a node lost mid-run,
the driver killed and resumed. Every fold process is checked gone afterwards."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from conftest import FOLDS, journal_rows
from foldrunner.procs import proctree
from ray_cluster import RayCluster

pytestmark = pytest.mark.timeout(240)

COMPARED = ["fold_id", "status", "attempts", "metric_acc"]


def write_spec(tmp_path: Path, name: str, **sections) -> Path:
    spec = {
        "name": name, "entrypoint": "matrix:train", "workdir": str(FOLDS),
        "cv": {"folds": 1}, "resources": {"gpus": "none", "workers": 2},
        "limits": {"timeout": "3s", "grace": "1s", "exit_timeout": "2s"},
        "retry": {"attempts": 2, "on": ["timeout", "crashed", "memory"], "backoff": 0},
    }
    spec.update(sections)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def foldrunner_cli(cluster: RayCluster | None, *args: str, timeout: float = 200,
                   **popen) -> subprocess.CompletedProcess[str]:
    env = dict(cluster.env if cluster is not None else os.environ)
    return subprocess.run([sys.executable, "-m", "foldrunner", *args], env=env, text=True,
                          capture_output=True, timeout=timeout, **popen)


def run_on(cluster: RayCluster, spec: Path, run_dir: Path,
           *extra: str) -> subprocess.CompletedProcess[str]:
    """``foldrunner run SPEC --backend ray --address`` the cluster, to its end."""
    return foldrunner_cli(cluster, "run", str(spec), "--run-dir", str(run_dir),
                          "--backend", "ray", "--address", cluster.address, *extra)


def spans_by(df: pd.DataFrame, spans: Path, key) -> dict:  # type: ignore[no-untyped-def]
    """Each ``key(row)``'s ``(start, end)`` of its folds (rayfolds:span's records), sorted."""
    out: dict = {}
    for row in df.itertuples():
        s = span_of(spans, row.fold_id)
        out.setdefault(key(row), []).append((s["t0"], s["t1"]))
    return {k: sorted(v) for k, v in out.items()}


def span_of(spans: Path, fold_id: str) -> dict:
    """What rayfolds recorded of ``fold_id``'s first attempt."""
    return json.loads((spans / f"{fold_id}.1.json").read_text())


def assert_one_at_a_time(by: dict, what: str) -> None:
    for key, spans_ in by.items():
        for (_, end), (start, _) in zip(spans_, spans_[1:]):
            assert start >= end, f"two folds at once on {what} {key}"


def marked_alive(prefix: str = "") -> list[int]:
    return [p.pid for p in proctree.marked_processes(prefix)
            if (proctree.stat_ids(p.pid) or ("Z",))[0] != "Z"]


def start_ray_run(cluster: RayCluster, spec: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    """``foldrunner run SPEC --backend ray`` against ``cluster``, in a session of its own."""
    return subprocess.Popen(
        [sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir", str(run_dir),
         "--backend", "ray", "--address", cluster.address, *extra],
        env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


def wait_for_journal(proc: subprocess.Popen, run_dir: Path, ready, what: str,
                     columns: str = "fold_id, attempt, status, node") -> None:
    """Poll the run's journal until ``ready(rows)``; fail (the run killed) after 90 s."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if ready(journal_rows(run_dir, columns)):
            return
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"the run never got to: {what}")


def test_results_equal_the_local_backend(tmp_path, ray_cluster):
    cases = ["return", "raise", "fail_once", "exit3", "hang", "memory_error", "report"]
    spec = write_spec(tmp_path, "same", search={"grid": {"case": cases}})
    local = foldrunner_cli(None, "run", str(spec), "--run-dir", str(tmp_path / "local"))
    remote = run_on(ray_cluster, spec, tmp_path / "ray")
    assert local.returncode == remote.returncode == 1, (local.stderr, remote.stderr)
    a = pd.read_csv(tmp_path / "local" / "results.csv")
    b = pd.read_csv(tmp_path / "ray" / "results.csv")
    pd.testing.assert_frame_equal(a[COMPARED], b[COMPARED])
    assert list(a["param_case"]) == list(b["param_case"]) == cases
    def errors(df: pd.DataFrame) -> list[str]:  # each names its own run dir's log
        return [re.sub(r" \(see [^)]*\)", "", e) for e in df["error"].fillna("")]

    assert errors(a) == errors(b)
    assert set(b["node"]) <= {n.node_id for n in ray_cluster.nodes}
    assert b["host"].notna().all()
    log = (tmp_path / "ray" / "logs" / "t0-r0-f0.1.log").read_text()
    assert "case return attempt 1" in log  # the log came back to the driver's run dir
    assert not marked_alive()


def test_gpus_are_pinned_and_folds_run_on_both_nodes(tmp_path, ray_cluster):
    spans = tmp_path / "spans"
    spec = write_spec(
        tmp_path, "gpus", entrypoint="rayfolds:span", params={"seconds": 1.0, "spans": str(spans)},
        cv={"folds": 12}, resources={"gpus": "auto", "per_gpu": 1},
        limits={"timeout": "30s", "grace": "1s", "exit_timeout": "5s"},
    )
    out = run_on(ray_cluster, spec, tmp_path / "run")
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(tmp_path / "run" / "results.csv", dtype={"metric_cuda": str})
    assert (df["status"] == "ok").all()
    assert set(df["node"]) == {n.node_id for n in ray_cluster.nodes}  # both nodes worked
    # each fold saw exactly the one GPU Ray gave it, and the journal says which
    assert list(df["metric_cuda"]) == [str(g) for g in df["gpu"]]
    assert_one_at_a_time(spans_by(df, spans, lambda row: (row.node, int(row.gpu))), "GPU")
    assert not marked_alive()


def test_folds_without_gpus_start_from_warm_spares_on_a_cluster_with_gpus(tmp_path, ray_cluster):
    # the cluster declares GPUs, the spec uses none: the nodes' helpers keep a spare per
    # CPU slot, and each fold after the first on a slot takes one, a process started
    # while the previous fold ran; a cold start's process begins with its attempt
    spec = write_spec(
        tmp_path, "warm", entrypoint="rayfolds:aged", params={"seconds": 1.5}, cv={"folds": 6},
        resources={"gpus": "none", "workers": 2},
        limits={"timeout": "30s", "grace": "1s", "exit_timeout": "5s"},
    )
    out = run_on(ray_cluster, spec, tmp_path / "run")
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(tmp_path / "run" / "results.csv")
    assert (df["status"] == "ok").all() and df["gpu"].isna().all()
    ages = sorted(df["metric_age"])
    assert sum(a > 1.0 for a in ages) >= 3, f"process ages at the entry point (s): {ages}"
    assert not marked_alive()


@pytest.mark.parametrize("workers, note", [
    (None, "up to 2 folds in flight, 2 CPUs each"),  # the cluster's 4 CPUs / 2
    (4, "up to 4 folds in flight, 2 CPUs each"),     # 2 of them wait in Ray's queue
])
def test_cpus_per_fold_is_what_each_fold_asks_ray_for(tmp_path, ray_cluster, workers, note):
    # 2 nodes of 2 CPUs, 2 CPUs a fold: never two folds at once on one node
    spans = tmp_path / "spans"
    spec = write_spec(
        tmp_path, "cpus", entrypoint="rayfolds:span", params={"seconds": 1.0, "spans": str(spans)},
        cv={"folds": 6}, resources={"gpus": "none", "workers": workers}, ray={"cpus_per_fold": 2},
        limits={"timeout": "30s", "grace": "1s", "exit_timeout": "5s"},
    )
    out = run_on(ray_cluster, spec, tmp_path / "run")
    assert out.returncode == 0, out.stderr
    assert note in out.stderr + out.stdout
    df = pd.read_csv(tmp_path / "run" / "results.csv")
    assert (df["status"] == "ok").all()
    by_node = spans_by(df, spans, lambda row: row.node)
    assert set(by_node) == {n.node_id for n in ray_cluster.nodes}
    assert_one_at_a_time(by_node, "node")
    assert not marked_alive()


_TASKS_RUNNING = """
import json, sys, time
import ray
from ray._private.state import state  # the GCS's task events (the dashboard is off here)
from ray.core.generated import common_pb2
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
since, want, deadline = float(sys.argv[2]), int(sys.argv[3]), time.time() + 30
RUNNING = common_pb2.TaskStatus.Value("RUNNING")
while True:  # task events reach the GCS about every second
    seen = {}
    for e in state._get_all_task_events():
        name, ts = e.task_info.name, dict(e.state_updates.state_ts_ns)
        if name.startswith("foldrunner ") and ts.get(RUNNING, 0) / 1e9 >= since:
            seen[name.split()[-1]] = ts[RUNNING] / 1e9
    if len(seen) >= want or time.time() > deadline:
        break
    time.sleep(0.5)
print(json.dumps(seen))
"""


def tasks_running_at(cluster: RayCluster, since: float, want: int) -> dict[str, float]:
    """When each attempt's Ray task began to run (``"t0-r0-f1.1"``: its wall clock), from
    Ray's task events: tasks that ran since ``since``."""
    out = cluster.run_driver(_TASKS_RUNNING, str(since), str(want), timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cpus, where", [
    (1, "the same node"),  # its helper sees the process end
    (2, "the other node"),  # a fold fills a node: Ray places the next one on the other,
])                          # which waits for the driver to say the previous one ended
def test_a_fold_that_exits_slowly_hands_its_slot_over_on_its_result(tmp_path, ray_cluster,
                                                                    cpus, where):
    # workers 1: each fold returns at once, then its process takes 1.5 s to exit (as
    # TensorFlow's teardown takes tens of ms). On its result the driver sends the next
    # attempt, whose task starts at once and waits on its node: the next fold starts when
    # the process is gone, never before (one fold at a time), and without the driver's
    # round trip after that end
    spans = tmp_path / "spans"
    spec = write_spec(
        tmp_path, "handover", entrypoint="rayfolds:exits_slowly", cv={"folds": 4},
        params={"seconds": 0.2, "exit": 1.5, "spans": str(spans)},
        resources={"gpus": "none", "workers": 1}, ray={"cpus_per_fold": cpus},
        limits={"timeout": "30s", "grace": "1s", "exit_timeout": "10s"},
    )
    since = time.time()
    out = run_on(ray_cluster, spec, tmp_path / "run")
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(tmp_path / "run" / "results.csv")
    assert (df["status"] == "ok").all()
    by_run = spans_by(df, spans, lambda row: "the run")
    assert_one_at_a_time(by_run, "slot of")
    running = tasks_running_at(ray_cluster, since, 4)
    order = df.assign(t0=[span_of(spans, f)["t0"] for f in df["fold_id"]]).sort_values("t0")
    for prev, nxt in zip(order.itertuples(), list(order.itertuples())[1:]):
        prev_exit = span_of(spans, prev.fold_id)["t1"]
        assert running[f"{nxt.fold_id}.1"] < prev_exit, \
            f"{nxt.fold_id}'s task began only after {prev.fold_id}'s process was gone"
        assert (nxt.node == prev.node) == (where == "the same node")
    assert not marked_alive()


def test_an_attempt_waiting_for_its_slot_is_ended_before_it_starts(tmp_path, ray_cluster):
    # fold 0 returns, then its process would take 60 s to exit; fold 1's task waits on the
    # node for it. Ctrl-C: fold 0 keeps its result, fold 1 ends cancelled without starting
    spans = tmp_path / "spans"
    spec = write_spec(
        tmp_path, "waiting", entrypoint="rayfolds:exits_slowly", cv={"folds": 2},
        params={"seconds": 0.0, "exit": 60, "spans": str(spans)},
        resources={"gpus": "none", "workers": 1},
        limits={"timeout": "120s", "grace": "1s", "exit_timeout": "100s"},
    )
    since = time.time()
    run_dir = tmp_path / "run"
    proc = start_ray_run(ray_cluster, spec, run_dir)
    wait_for_journal(proc, run_dir, lambda rows: any(r[2] == "ok" for r in rows),
                     "fold 0's result")
    assert "t0-r0-f1.1" in tasks_running_at(ray_cluster, since, 2), "fold 1's task never ran"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    rows = journal_rows(run_dir, "fold_id, attempt, status, error, pid")
    assert [r[:3] for r in rows] == [("t0-r0-f0", 1, "ok"), ("t0-r0-f1", 1, "cancelled")], rows
    assert "before it started" in rows[1][3] and rows[1][4] is None, rows
    assert not (spans / "t0-r0-f1.1.json").exists()
    assert not marked_alive()


def test_an_adaptive_search_runs_on_ray_and_keeps_each_slot_until_its_fold_ends(tmp_path,
                                                                                 ray_cluster):
    # search.optuna on the cluster: the study and the journal as locally; no handover (the
    # pruner judges each fold at its end, and a trial's next fold waits for that)
    spans = tmp_path / "spans"
    spec = write_spec(
        tmp_path, "adaptive", entrypoint="rayfolds:exits_slowly", cv={"folds": 2},
        params={"seconds": 0.1, "exit": 0.8, "spans": str(spans)},
        search={"optuna": {"trials": 3, "sampler": "tpe", "seed": 3,
                           "space": {"x": {"uniform": [0.0, 1.0]}},
                           "pruner": {"median": {"warmup_folds": 0, "min_trials": 2}}}},
        objective={"metric": "acc", "mode": "max"},
        resources={"gpus": "none", "workers": 1},
        limits={"timeout": "30s", "grace": "1s", "exit_timeout": "10s"},
    )
    since = time.time()
    out = run_on(ray_cluster, spec, tmp_path / "run")
    assert out.returncode == 0, out.stderr
    df = pd.read_csv(tmp_path / "run" / "results.csv")
    assert len(df) == 6 and set(df["status"]) <= {"ok", "pruned"}, df[["fold_id", "status"]]
    assert df["param_x"].nunique() == 3
    import optuna

    study = optuna.load_study(study_name="adaptive",
                              storage=f"sqlite:///{tmp_path / 'run' / 'optuna.sqlite'}")
    assert len(study.trials) == 3 and all(t.state.is_finished() for t in study.trials)
    ran = df[df["status"] == "ok"]
    running = tasks_running_at(ray_cluster, since, len(ran))
    exits = sorted((span_of(spans, f)["t0"], span_of(spans, f)["t1"], f) for f in ran["fold_id"])
    for (_, prev_exit, prev), (_, _, nxt) in zip(exits, exits[1:]):
        assert running[f"{nxt}.1"] >= prev_exit, f"{nxt}'s task ran while {prev}'s process exited"
    assert not marked_alive()


def test_a_lost_node_fails_its_attempts_which_are_retried_elsewhere(tmp_path):
    with RayCluster(workers=1, gpus_per_node=0) as cluster:
        spec = write_spec(
            tmp_path, "lost", entrypoint="rayfolds:span",
            params={"seconds": 2.0, "spans": str(tmp_path / "spans")}, cv={"folds": 8},
            resources={"gpus": "none", "workers": 4},
            limits={"timeout": "60s", "grace": "1s", "exit_timeout": "5s"},
            retry={"attempts": 3, "on": ["crashed"], "backoff": 0},
        )
        run_dir = tmp_path / "run"
        proc = start_ray_run(cluster, spec, run_dir)
        worker = cluster.nodes[1].node_id
        wait_for_journal(proc, run_dir, lambda rows: any(
            r[2] == "running" and r[3] == worker for r in rows), "a fold running on the worker")
        cluster.kill_node(1)
        out, err = proc.communicate(timeout=150)
        assert proc.returncode == 0, err
        df = pd.read_csv(run_dir / "results.csv")
        assert (df["status"] == "ok").all() and (df["node"] != worker).all()
        lost = [r for r in journal_rows(run_dir, "fold_id, attempt, status, node, error")
                if r[3] == worker and r[2] != "ok"]
        assert lost and all(r[2] == "crashed" for r in lost), lost
        assert all("Ray task failed" in r[4] for r in lost), lost
    assert not marked_alive()


def test_a_killed_driver_leaves_no_fold_and_resume_finishes(tmp_path, ray_cluster):
    spec = write_spec(
        tmp_path, "driverkill", entrypoint="rayfolds:span",
        params={"seconds": 3.0, "spans": str(tmp_path / "spans")}, cv={"folds": 8},
        resources={"gpus": "none", "workers": 4},
        limits={"timeout": "60s", "grace": "2s", "exit_timeout": "5s"},
    )
    run_dir = tmp_path / "run"
    proc = start_ray_run(ray_cluster, spec, run_dir)
    wait_for_journal(proc, run_dir, lambda rows: {"ok", "running"} <= {r[2] for r in rows},
                     "folds done and folds running at once")
    ok_before = {r[0]: r[1] for r in journal_rows(run_dir) if r[2] == "ok"}
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    deadline = time.monotonic() + 2 + 5 + 10  # grace + 5 s, and Ray's own notice
    while marked_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not marked_alive(), "folds outlived their driver"
    out = run_on(ray_cluster, spec, run_dir, "--resume")
    assert out.returncode == 0, out.stderr
    rows = journal_rows(run_dir)
    assert {r[0] for r in rows if r[2] == "ok"} == {f"t0-r0-f{i}" for i in range(8)}
    for fold_id, attempt in ok_before.items():  # no ok fold was run again
        assert [r[1] for r in rows if r[0] == fold_id] == [attempt]
    assert not marked_alive()


def test_address_local_starts_a_private_ray_and_stops_it(tmp_path):
    """``ray.address: local``: a private Ray for the run, on loopback, gone after it."""
    import tempfile

    from ray_cluster import ray_env

    raytmp = tempfile.mkdtemp(prefix="rl-", dir="/tmp")  # short: Ray's socket paths

    def its_processes() -> list[int]:
        found = []
        for p in psutil.process_iter(["cmdline"]):
            if any(raytmp in arg for arg in p.info["cmdline"] or []):
                found.append(p.pid)
        return found

    spec = write_spec(tmp_path, "private", params={"case": "return"}, cv={"folds": 2},
                      backend="ray", ray={"address": "local"})
    env = {**ray_env(tmp_path / "home"), "RAY_TMPDIR": raytmp}
    proc = subprocess.Popen([sys.executable, "-m", "foldrunner", "run", str(spec), "--run-dir",
                             str(tmp_path / "run")], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = False
    deadline = time.monotonic() + 200
    while proc.poll() is None and time.monotonic() < deadline:
        seen = seen or bool(its_processes())
        time.sleep(0.2)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert seen, "no Ray was started in RAY_TMPDIR"
    assert "a private Ray on this machine" in err
    df = pd.read_csv(tmp_path / "run" / "results.csv")
    assert list(df["status"]) == ["ok", "ok"] and df["node"].notna().all()
    deadline = time.monotonic() + 10
    while its_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not its_processes(), "the private Ray outlived its run"
    assert not marked_alive()


def test_losing_the_head_ends_the_run_with_exit_1_and_nothing_left(tmp_path):
    """Contract §7: in-flight attempts ``crashed``, exit 1 (before Ray's own minute is up),
    no fold left running, the journal ready for ``--resume``."""
    with RayCluster(workers=1, gpus_per_node=0) as cluster:
        spec = write_spec(
            tmp_path, "head", entrypoint="rayfolds:span",
            params={"seconds": 3.0, "spans": str(tmp_path / "spans")}, cv={"folds": 8},
            resources={"gpus": "none", "workers": 4},
            limits={"timeout": "60s", "grace": "1s", "exit_timeout": "5s"},
        )
        run_dir = tmp_path / "run"
        proc = start_ray_run(cluster, spec, run_dir)
        wait_for_journal(proc, run_dir, lambda rows: [r[2] for r in rows].count("running") >= 2,
                         "two folds running at once")
        t0 = time.monotonic()
        cluster.kill_node(0)
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - t0
        assert proc.returncode == 1, err
        assert "lost the Ray cluster's head" in err and "--resume" in err
        assert took < 45, f"the driver took {took:.0f}s to notice"
        rows = journal_rows(run_dir, "fold_id, attempt, status, error")
        assert rows and all(r[2] in ("ok", "crashed") for r in rows), rows
        assert any(r[2] == "crashed" for r in rows)
        deadline = time.monotonic() + 10
        while marked_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not marked_alive()
