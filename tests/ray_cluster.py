"""A real Ray cluster on this machine, for tests and benchmarks (../shared/RAY-TESTING.md).

    with RayCluster(workers=1, gpus_per_node=2) as cluster:      # a head and one worker node
        out = cluster.run_driver("import ray, sys; ray.init(address=sys.argv[1]); ...")
        cluster.kill_node(1)                                     # the second machine is lost
    # every process of the cluster is gone here (stop() checks it)

What it does, as RAY-TESTING.md asks, so that nothing leaves the machine:

- every Ray process runs with ``RAY_USAGE_STATS_ENABLED=0``,
  ``RAY_USAGE_STATS_REPORT_URL=http://127.0.0.1:9/``, ``RAY_AUTH_MODE=disabled`` and a
  ``HOME`` of its own holding ``ray_bootstrap_config.yaml`` (``provider: {type: local}``);
  ``cluster.env`` is that environment, for the drivers;
- node *i* binds 127.0.0.(2+i) (the head is node 0, on 127.0.0.2), with ``--num-cpus``,
  ``--num-gpus`` (logical GPUs), a custom resource ``rc_node_<i>`` (100 units) naming it,
  an object store of ~80 MB, ``--include-dashboard=false`` and every port picked free
  (GCS, client server, dashboard, agents, metrics, node and object managers, workers);
- each node is ``ray start --block`` under a *keeper*: this file run as a script, the
  leader of a session of its own and a child subreaper, so every process of the node
  (raylet, gcs_server, agents, workers) stays in its tree and session. The keeper holds
  the read end of a pipe only the harness writes to: if the harness's process dies
  (``kill -9`` of pytest), the keeper kills its node's processes and exits;
- ``kill_node(i)`` is SIGKILL to the whole node at once (a lost machine); ``stop()`` does
  that to every node (workers first, the head last) and then checks that no process of
  the cluster is alive; never ``ray stop`` (which stops every Ray on the machine).

Only the standard library, foldrunner.remote.cluster (its Ray settings; it imports no
ray) and foldrunner.child.lifeline (reaping; standard library only) are imported here:
ray is needed by the drivers, not by this file.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foldrunner.child.lifeline import reap_children
from foldrunner.remote.cluster import BOOTSTRAP_CONFIG, QUIET_ENV

__all__ = ["RAY_SAFE_ENV", "RayCluster", "RayNode", "alive", "free_ports", "port_open",
           "ray_available", "ray_env", "session_processes"]

# What every Ray process (node or driver) must run with; HOME is added per cluster.
# the settings foldrunner itself runs Ray with (usage stats off, auth off, local provider)
RAY_SAFE_ENV = QUIET_ENV


def ray_available() -> str | None:
    """None when ray (and its ``ray`` command) can be used here, else why not.

    Checked without importing ray. Note: ``tests/ray`` (a folder without ``__init__``)
    is on sys.path in the tests, so a bare ``import ray`` there would succeed as an empty
    namespace package when ray is not installed; ``find_spec`` says which it found.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec("ray")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None or not spec.origin.endswith("__init__.py"):
        return "ray is not installed (pip install 'foldrunner[ray]', or 'ray[default]')"
    if _ray_command() is None:
        return "ray is importable but its `ray` command is not found next to the interpreter"
    return None


def _last_json(stdout: str) -> Any:
    """The JSON value a driver printed last (None also when it printed none). Ray may print
    after it, even with log_to_driver=False ("(raylet) A worker died...", a raylet's log
    line), from another thread, even on the same line as the JSON: a JSON prefix counts."""
    decoder = json.JSONDecoder()
    for line in reversed(stdout.strip().splitlines()):
        try:
            return decoder.raw_decode(line.strip())[0]
        except ValueError:
            continue
    return None


def _ray_command() -> list[str] | None:
    script = Path(sys.executable).parent / "ray"
    if script.exists():
        return [sys.executable, str(script)]
    found = shutil.which("ray")
    return [found] if found else None


def ray_env(home: str | os.PathLike[str], base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) made safe for Ray: usage stats off
    and pointed at a dead local port, auth off, ``HOME`` at ``home`` (which gets the
    bootstrap config), no inherited ``RAY_ADDRESS``."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "ray_bootstrap_config.yaml"
    if not cfg.exists():
        cfg.write_text(BOOTSTRAP_CONFIG)
    env = dict(os.environ if base is None else base)
    env.pop("RAY_ADDRESS", None)
    env.update(RAY_SAFE_ENV)
    env["HOME"] = str(home)
    return env


def free_ports(n: int, host: str = "") -> list[int]:
    """n distinct ports free right now (all held open until all are picked)."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port not in ports and port >= 10000:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- processes

def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, session) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2:].split()
    return rest[0].decode(), int(rest[1]), int(rest[2]), int(rest[3])


def _all_stats() -> dict[int, tuple[str, int, int, int]]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                out[int(name)] = st
    return out


def _tree(roots: set[int], sessions: set[int],
          stats: dict[int, tuple[str, int, int, int]] | None = None) -> set[int]:
    """Live (not zombie) processes in ``sessions`` or below ``roots``/those, by /proc."""
    stats = _all_stats() if stats is None else stats
    members = {pid for pid, st in stats.items() if st[3] in sessions} | (roots & stats.keys())
    children: dict[int, list[int]] = {}
    for pid, st in stats.items():
        children.setdefault(st[1], []).append(pid)
    todo = list(members)
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in members:
                members.add(c)
                todo.append(c)
    return {pid for pid in members if stats[pid][0] not in ("Z", "X")}


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def session_processes(sessions: set[int]) -> set[int]:
    """Live processes of these sessions, and everything below their members."""
    return _tree(set(), set(sessions))


def _kill_all(pids: set[int], sessions: set[int]) -> None:
    for sid in sessions:  # a session's leader started it, so its pgid is its sid
        try:
            os.killpg(sid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
    except OSError:
        return "?"


# --------------------------------------------------------------------------- the keeper

def _keeper_main(argv: list[str]) -> int:
    """``python ray_cluster.py --keeper -- RAY START ...``: run one node, end it on EOF.

    Started by the harness as a session leader with a pipe as stdin. It becomes a child
    subreaper, runs the ``ray start --block`` command as its child and, when stdin reaches
    end of file (the harness is gone or asks it), on SIGTERM/SIGINT/SIGHUP, or when the
    node's ``ray start`` exits, SIGKILLs every process of its session and tree, reaps
    them, and exits.
    """
    import ctypes

    cmd = argv[argv.index("--") + 1:]
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass  # not Linux: the session alone then holds the node's processes
    me = os.getpid()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: done.set())

    def lifeline() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        done.set()

    node = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    threading.Thread(target=lifeline, daemon=True).start()
    while not done.wait(0.2):
        if node.poll() is not None:
            break
        reap_children()
    code = node.poll()
    sid = os.getsid(0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = _tree({me}, {sid}) - {me}
        if not left:
            break
        _kill_all(left, set())
        time.sleep(0.05)
        reap_children()
    reap_children()
    return 0 if code is None else (code if code >= 0 else 128 - code)


# --------------------------------------------------------------------------- the cluster

class NodeExited(RuntimeError):
    """A node's ``ray start`` ended while the cluster was starting (its log tail says why)."""


@dataclass
class RayNode:
    """One node of the cluster: node 0 is the head."""

    index: int
    ip: str                      # 127.0.0.(2 + index)
    resource: str                # the custom resource naming it: rc_node_<index>
    log: Path                    # its keeper's and `ray start`'s output
    proc: subprocess.Popen[bytes] | None = None   # the keeper (session leader: sid == pgid == pid)
    node_id: str | None = None   # Ray's hex NodeID, once the node is alive
    killed: bool = False
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def sid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def processes(self) -> set[int]:
        """Live processes of this node (its session and the keeper's tree)."""
        if self.proc is None:
            return set()
        return _tree({self.proc.pid}, {self.proc.pid})


_PROBE = textwrap.dedent("""
    import json, sys, time
    import ray
    address, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    deadline = time.monotonic() + timeout
    while True:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        if len(nodes) >= want or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(json.dumps([{"ip": n["NodeManagerAddress"], "node_id": n["NodeID"],
                       "resources": n["Resources"]} for n in nodes]))
    ray.shutdown()
""")


class RayCluster:
    """A head node and ``workers`` worker nodes on loopback (see the module docstring).

    Attributes once started: ``address`` ("127.0.0.2:PORT", the GCS), ``env`` (the
    environment any driver must run with), ``nodes`` (``RayNode``, head first),
    ``root`` (its folder: ``home/``, ``tmp/`` (Ray's temp dir) and the node logs),
    ``start_seconds`` and, after ``stop()``, ``stop_seconds``.
    """

    def __init__(self, workers: int = 1, *, gpus_per_node: int = 2, cpus_per_node: int = 2,
                 head_cpus: int | None = None, object_store_mb: int = 80,
                 start_timeout: float = 120.0, keep_root: bool = False) -> None:
        why = ray_available()
        if why is not None:
            raise RuntimeError(why)
        self.workers = workers
        self.gpus_per_node = gpus_per_node
        self.cpus_per_node = cpus_per_node
        self.head_cpus = cpus_per_node if head_cpus is None else head_cpus
        """The head's CPUs: 0 puts every task (each asks for a CPU) on the other nodes."""
        self.object_store_mb = object_store_mb
        self.start_timeout = start_timeout
        self.keep_root = keep_root
        # short: Ray's unix sockets live below it and their paths must stay under 107 bytes
        self.root = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
        self.env = ray_env(self.root / "home")
        self.nodes = [
            RayNode(i, f"127.0.0.{2 + i}", f"rc_node_{i}", self.root / f"node{i}.log")
            for i in range(1 + workers)
        ]
        self.address = ""
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None
        self.timings: dict[str, float] = {}  # seconds from start(): gcs_open, all_alive
        self._stopped = False
        self._gcs_seen = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ life

    def __enter__(self) -> RayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> RayCluster:
        """Start the head, then the workers; return once all nodes are alive in the GCS.

        A node that exits while starting (a port picked free was taken meanwhile, on a busy
        machine) makes it start the whole cluster once more, on other ports."""
        t0 = time.monotonic()
        for attempt in (1, 2):
            try:
                self._start_once(t0)
                break
            except NodeExited:
                if attempt == 2:
                    self._remove_root()
                    raise
                self._stopped = False
                for node in self.nodes:
                    node.proc, node.node_id, node.killed = None, None, False
            except BaseException:
                self._remove_root()
                raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _start_once(self, t0: float) -> None:
        atexit.register(self.stop)
        self._gcs_seen = False
        try:
            head = self.nodes[0]
            ports = free_ports(3 + 6 * len(self.nodes))
            gcs, client, dashboard = ports[:3]
            self.address = f"{head.ip}:{gcs}"
            per_node = ports[3:]
            for node in self.nodes:
                names = ["node_manager", "object_manager", "agent_listen", "agent_grpc",
                         "runtime_env_agent", "metrics"]
                node.ports = dict(zip(names, per_node[6 * node.index: 6 * node.index + 6]))
            head.ports.update(gcs=gcs, client=client, dashboard=dashboard)
            self._launch(head, ["--head", f"--port={gcs}", f"--ray-client-server-port={client}",
                                f"--dashboard-port={dashboard}", "--include-dashboard=false"])
            deadline = t0 + self.start_timeout
            while not (port_open(head.ip, gcs) and self._gcs_state() == "running"):
                self._check_running(head)
                if self._gcs_state() == "exited":
                    raise NodeExited("the head's gcs_server exited:\n" + self.log_tail(0))
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the head's GCS {self.address} did not open")
                time.sleep(0.1)
            self.timings["gcs_open"] = time.monotonic() - t0
            for node in self.nodes[1:]:
                self._launch(node, [f"--address={self.address}"])
            self._wait_alive(deadline)
            self.timings["all_alive"] = time.monotonic() - t0
        except BaseException:
            self.stop(verify=False, remove=False)
            raise

    def _launch(self, node: RayNode, role: list[str]) -> None:
        p = node.ports
        cmd = [*_ray_command(), "start", "--block", *role,  # type: ignore[misc]
               f"--node-ip-address={node.ip}",
               f"--num-cpus={self.head_cpus if node.index == 0 else self.cpus_per_node}",
               f"--num-gpus={self.gpus_per_node}",
               f"--resources={json.dumps({node.resource: 100})}",
               f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
               "--disable-usage-stats",
               f"--temp-dir={self.root / 'tmp'}",
               f"--node-manager-port={p['node_manager']}",
               f"--object-manager-port={p['object_manager']}",
               f"--dashboard-agent-listen-port={p['agent_listen']}",
               f"--dashboard-agent-grpc-port={p['agent_grpc']}",
               f"--runtime-env-agent-port={p['runtime_env_agent']}",
               f"--metrics-export-port={p['metrics']}",
               "--min-worker-port=0", "--max-worker-port=0",  # workers: any free port
               "--log-style=record", "--log-color=false"]
        with open(node.log, "ab") as log:
            node.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--keeper", "--", *cmd],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.root, start_new_session=True,
            )

    def _gcs_state(self) -> str:
        """``running``, ``exited`` (a zombie, or gone) or ``none`` (not started yet): the
        head's gcs_server. A port taken by another program between our picking and Ray's
        binding makes it exit at once, and ``ray start`` notices only ~40 s later."""
        head = self.nodes[0]
        if head.proc is None:
            return "none"
        stats = _all_stats()
        members = {pid for pid, st in stats.items() if st[3] == head.proc.pid}
        for pid in members:
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() != "gcs_server":
                        continue
            except OSError:
                continue
            if stats[pid][0] in ("Z", "X"):
                return "exited"
            self._gcs_seen = True
            return "running"
        return "exited" if self._gcs_seen else "none"

    def _check_running(self, node: RayNode) -> None:
        if node.proc is not None and node.proc.poll() is not None:
            raise NodeExited(f"node {node.index} ({node.ip}) exited with {node.proc.returncode}:\n"
                             + self.log_tail(node.index))

    def _wait_alive(self, deadline: float) -> None:
        want = len(self.nodes)
        last = ""
        while True:
            left = deadline - time.monotonic()
            for node in self.nodes:
                self._check_running(node)
            if self._gcs_state() != "running":
                raise NodeExited("the head's gcs_server is gone:\n" + self.log_tail(0))
            if left <= 0:
                raise TimeoutError(f"{want} nodes not alive in time; last probe: {last[-2000:]}\n"
                                   + "\n".join(self.log_tail(n.index) for n in self.nodes))
            try:  # in rounds of at most ~30 s, to see a dead GCS in between
                out = self.run_driver(_PROBE, str(want), str(min(15.0, max(1.0, left - 5))),
                                      timeout=min(left, 15) + 15)
            except subprocess.TimeoutExpired:
                last = "timed out"
                continue
            if out.returncode != 0:
                last = out.stderr
                time.sleep(0.5)
                continue
            alive = _last_json(out.stdout)
            if alive is None:  # only Ray's own lines (a raylet's message after ours)
                last = out.stdout
                time.sleep(0.5)
                continue
            by_ip = {a["ip"]: a["node_id"] for a in alive}
            for node in self.nodes:
                node.node_id = by_ip.get(node.ip)
            if all(n.node_id for n in self.nodes):
                return

    def log_tail(self, index: int, lines: int = 30) -> str:
        node = self.nodes[index]
        try:
            text = node.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = []
        return f"--- node {index} ({node.ip}) log {node.log}:\n" + "\n".join(text)

    # ------------------------------------------------------------------ use

    def run_driver(self, code: str, *args: str, timeout: float = 120,
                   check: bool = False) -> subprocess.CompletedProcess[str]:
        """``python -c CODE ADDRESS *args`` with the cluster's environment, output captured.

        In CODE, ``sys.argv[1]`` is the cluster's address: ``ray.init(address=sys.argv[1])``.
        """
        return subprocess.run(
            [sys.executable, "-c", code, self.address, *args], env=self.env, cwd=self.root,
            capture_output=True, text=True, timeout=timeout, check=check,
        )

    def drive(self, code: str, *args: str, timeout: float = 120) -> Any:
        """``run_driver``, checked: the JSON value of the last line of the driver's output
        that is JSON (an AssertionError with its output when it fails or prints none)."""
        out = self.run_driver(code, *args, timeout=timeout)
        if out.returncode == 0:
            value = _last_json(out.stdout)
            if value is not None:
                return value
        raise AssertionError(f"driver failed (exit {out.returncode}) or printed no JSON:\n"
                             f"{out.stdout[-3000:]}\n{out.stderr[-5000:]}")

    def processes(self) -> set[int]:
        """Every live process of the cluster (all nodes' sessions and trees)."""
        roots = {n.proc.pid for n in self.nodes if n.proc is not None}
        return _tree(roots, roots)

    def kill_node(self, index: int) -> None:
        """SIGKILL every process of node ``index`` at once, as if its machine were lost.

        Node 0 is the head: killing it kills the cluster's GCS."""
        node = self.nodes[index]
        if node.proc is None:
            return
        with self._lock:
            sid = node.proc.pid
            for _ in range(50):
                left = _tree({sid}, {sid})
                if not left:
                    break
                _kill_all(left, {sid})
                time.sleep(0.02)
            node.proc.wait(timeout=10)
            node.killed = True

    def stop(self, verify: bool = True, remove: bool = True) -> None:
        """End every process of the cluster (workers first), check that none is left,
        remove its folder (unless ``keep_root``). Idempotent."""
        if self._stopped:
            return
        t0 = time.monotonic()
        for node in reversed(self.nodes):
            self.kill_node(node.index)
        deadline = time.monotonic() + 10
        while True:
            left = self.processes()
            if not left or time.monotonic() > deadline:
                break
            _kill_all(left, set())
            time.sleep(0.05)
        for node in self.nodes:
            if node.proc is not None and node.proc.stdin is not None:
                node.proc.stdin.close()
        self._stopped = True
        atexit.unregister(self.stop)
        self.stop_seconds = time.monotonic() - t0
        if left and verify:
            raise RuntimeError("Ray processes survived stop(): "
                               + "; ".join(f"{p} {_cmdline(p)}" for p in sorted(left)))
        if remove:
            self._remove_root()

    def _remove_root(self) -> None:
        if not self.keep_root:
            shutil.rmtree(self.root, ignore_errors=True)


if __name__ == "__main__" and "--keeper" in sys.argv:
    sys.exit(_keeper_main(sys.argv))
