"""The Ray test cluster itself (tests/ray_cluster.py): nodes, GPUs, node loss, a clean stop.

Drivers run in subprocesses with the cluster's environment; this process never imports
ray. What they print about node loss is what the Ray backend maps to ``crashed``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ray_cluster import RAY_SAFE_ENV, RayCluster, alive, session_processes

TESTS = Path(__file__).resolve().parents[1]

PRELUDE = """
import json, os, signal, sys, time
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)

def error_info(e):
    return {"type": type(e).__name__, "module": type(e).__module__,
            "mro": [c.__name__ for c in type(e).__mro__],
            "ray_error": isinstance(e, ray.exceptions.RayError), "message": str(e)[:500]}
"""


@pytest.mark.timeout(180)  # includes the module's cluster start
def test_a_task_pinned_to_each_node_runs_there(ray_cluster: RayCluster):
    nodes = ray_cluster.nodes
    assert [n.ip for n in nodes] == ["127.0.0.2", "127.0.0.3"]
    assert ray_cluster.address.startswith("127.0.0.2:")
    assert all(n.node_id for n in nodes)
    code = PRELUDE + """
@ray.remote(num_cpus=1, max_retries=0)
def where():
    return {"node_id": ray.get_runtime_context().get_node_id(),
            "ip": ray.util.get_node_ip_address(), "sid": os.getsid(0)}

ids, resources = json.loads(sys.argv[2]), json.loads(sys.argv[3])
by_id = ray.get([where.options(scheduling_strategy=Affinity(i, soft=False)).remote() for i in ids])
by_resource = ray.get([where.options(resources={r: 1}).remote() for r in resources])
print(json.dumps({"by_id": by_id, "by_resource": by_resource}))
"""
    out = ray_cluster.drive(code, json.dumps([n.node_id for n in nodes]),
                            json.dumps([n.resource for n in nodes]))
    for key in ("by_id", "by_resource"):
        for node, got in zip(nodes, out[key]):
            assert (got["ip"], got["node_id"]) == (node.ip, node.node_id), (key, got)
            # a node's workers stay in its keeper's session: stop() and kill_node() find them
            assert got["sid"] == node.sid, (key, got, node.sid)


@pytest.mark.timeout(120)
def test_a_task_with_one_gpu_gets_one_logical_gpu(ray_cluster: RayCluster):
    code = PRELUDE + """
@ray.remote(num_gpus=1, num_cpus=0, max_retries=0)
def gpu(hold):
    t0 = time.time()
    time.sleep(hold)
    return {"ids": ray.get_gpu_ids(), "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "ip": ray.util.get_node_ip_address(), "t0": t0, "t1": time.time()}

@ray.remote(num_cpus=1, max_retries=0)
def no_gpu():
    return {"ids": ray.get_gpu_ids(), "cvd": os.environ.get("CUDA_VISIBLE_DEVICES")}

print(json.dumps({"gpu": ray.get([gpu.remote(2.0) for _ in range(4)]),
                  "no_gpu": ray.get(no_gpu.remote())}))
"""
    out = ray_cluster.drive(code)
    print("num_gpus=1:", out["gpu"], "\nno num_gpus:", out["no_gpu"])
    for got in out["gpu"]:
        assert len(got["ids"]) == 1 and got["ids"][0] in (0, 1, "0", "1"), got
        assert got["cvd"] == str(got["ids"][0]), got  # Ray sets CUDA_VISIBLE_DEVICES to it
    # two tasks running at the same time on one node never share a GPU
    for a in out["gpu"]:
        for b in out["gpu"]:
            if a is not b and a["ip"] == b["ip"] and a["t0"] < b["t1"] and b["t0"] < a["t1"]:
                assert a["ids"] != b["ids"], (a, b)
    assert out["no_gpu"]["ids"] == []


@pytest.mark.timeout(120)
def test_a_killed_worker_fails_its_task_with_worker_crashed(ray_cluster: RayCluster):
    code = PRELUDE + """
@ray.remote(num_cpus=1, max_retries=0)
def die():
    os.kill(os.getpid(), signal.SIGKILL)

try:
    ray.get(die.options(scheduling_strategy=Affinity(sys.argv[2], soft=False)).remote())
    print(json.dumps(None))
except Exception as e:
    print(json.dumps(error_info(e)))
"""
    err = ray_cluster.drive(code, ray_cluster.nodes[1].node_id)
    print("worker killed:", err)
    assert err is not None and err["ray_error"], err
    assert err["type"] == "WorkerCrashedError", err


def test_the_cluster_runs_with_the_safe_environment(ray_cluster: RayCluster):
    home = Path(ray_cluster.env["HOME"])
    assert (home / "ray_bootstrap_config.yaml").read_text().strip() == "provider: {type: local}"
    for key, value in RAY_SAFE_ENV.items():
        assert ray_cluster.env[key] == value
    procs = ray_cluster.processes()
    seen = 0
    for pid in procs:
        try:
            p = psutil.Process(pid)
            exe = " ".join(p.cmdline()[:1])
            # raylet and gcs_server do not rewrite their environment (the Python ones do)
            if exe.endswith(("/raylet", "/gcs_server")):
                env = p.environ()
                assert env.get("HOME") == str(home), exe
                for key, value in RAY_SAFE_ENV.items():
                    assert env.get(key) == value, (exe, key)
                seen += 1
            for c in p.net_connections(kind="inet"):  # nothing talks off the machine
                if c.raddr:
                    assert c.raddr.ip.startswith("127.") or c.raddr.ip in ("::1", "::ffff:127.0.0.1") \
                        or c.raddr.ip.startswith("::ffff:127."), (exe, c)
        except psutil.NoSuchProcess:
            continue
    assert seen == 3, seen  # one GCS and two raylets


LOSS = PRELUDE + """
@ray.remote(num_cpus=1, max_retries=0)
def hold(s):
    time.sleep(s)

@ray.remote(num_cpus=0, max_restarts=0)
class Helper:
    def ping(self):
        return os.getpid()
    def hold(self, s):
        time.sleep(s)

lost = sys.argv[2]
task = hold.options(scheduling_strategy=Affinity(lost, soft=False)).remote(120)
helper = Helper.options(scheduling_strategy=Affinity(lost, soft=False)).remote()
ray.get(helper.ping.remote())
call = helper.hold.remote(120)
time.sleep(2)  # the task has a worker and runs
print("READY", flush=True)
t0 = float(sys.stdin.readline())  # the test killed the node at this time.time()
out = {}
for name, ref in (("task", task), ("actor_call", call)):
    try:
        ray.get(ref, timeout=90)
        out[name] = None
    except Exception as e:
        out[name] = dict(error_info(e), after_s=round(time.time() - t0, 2))
while any(n["Alive"] for n in ray.nodes() if n["NodeID"] == lost):
    time.sleep(0.2)
out["node_dead_after_s"] = round(time.time() - t0, 2)
try:
    ray.get(helper.ping.remote(), timeout=30)
    out["actor_after"] = None
except Exception as e:
    out["actor_after"] = error_info(e)
print(json.dumps(out))
"""


@pytest.mark.timeout(240)
def test_a_lost_node_fails_its_task_and_stop_leaves_no_process():
    with RayCluster(workers=1, gpus_per_node=2) as cluster:
        driver = subprocess.Popen(
            [sys.executable, "-c", LOSS, cluster.address, cluster.nodes[1].node_id],
            env=cluster.env, cwd=cluster.root, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            assert driver.stdout is not None and driver.stdin is not None
            for line in driver.stdout:
                if line.startswith("READY"):
                    break
            else:
                pytest.fail(f"driver ended early: {driver.communicate()}")
            doomed = cluster.nodes[1].processes()
            assert doomed
            t0 = time.monotonic()
            killed_at = time.time()
            cluster.kill_node(1)
            print(f"node 1 killed in {time.monotonic() - t0:.3f}s")
            assert not [p for p in doomed if alive(p)]
            driver.stdin.write(f"{killed_at}\n")
            driver.stdin.flush()
            out, err = driver.communicate(timeout=180)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
        assert driver.returncode == 0, (out, err[-4000:])
        result = json.loads(next(line for line in reversed(out.strip().splitlines())
                                 if line.startswith("{")))
        print("node lost:", json.dumps(result, indent=1))
        task, call, after = result["task"], result["actor_call"], result["actor_after"]
        assert task and task["ray_error"] and task["type"] in ("NodeDiedError", "WorkerCrashedError"), task
        assert call and "RayActorError" in call["mro"], call
        assert after and "RayActorError" in after["mro"], after
        everything = cluster.processes()
        sessions = {n.sid for n in cluster.nodes}
        assert everything
    # after stop(): not one process of either node, nor of its sessions
    assert cluster.stop_seconds is not None
    print(f"started in {cluster.start_seconds:.1f}s {cluster.timings}, stopped in {cluster.stop_seconds:.2f}s")
    assert not [p for p in everything if alive(p)]
    assert not session_processes(sessions)
    assert not cluster.root.exists()


HOLDER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from ray_cluster import RayCluster
cluster = RayCluster(workers=1, gpus_per_node=1).start()
print(json.dumps({"pids": sorted(cluster.processes()), "sessions": [n.sid for n in cluster.nodes],
                  "root": str(cluster.root)}), flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(180)
def test_a_harness_killed_with_sigkill_leaves_no_process():
    """The keepers see their lifeline close and end their nodes."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(TESTS)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line, left = "", []
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line, holder.communicate()
        started = json.loads(line)
        assert started["pids"]
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            left = [p for p in started["pids"] if alive(p)] + sorted(
                session_processes(set(started["sessions"])))
            if not left:
                break
            time.sleep(0.1)
        assert not left, left
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if line:
            started = json.loads(line)
            for pid in set(started["pids"]) | session_processes(set(started["sessions"])):
                try:  # only when the test failed: leave nothing behind anyway
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            shutil.rmtree(started["root"], ignore_errors=True)
