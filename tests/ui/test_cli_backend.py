"""`foldrunner run --backend local|ray --address HOST:PORT` and `backend`/`ray` of the spec,
end to end in real subprocesses: a ray run that cannot work is refused with exit 2, one
clear message and nothing launched or written; the local backend runs as before.

No test here starts Ray or connects to one: every subprocess gets an empty Ray temp dir and
no RAY_ADDRESS (so `auto` finds nothing), and a ray run is always refused before it starts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import test_cli

pytestmark = pytest.mark.timeout(120)

# test_cli.py's spec without its objective, under a name of its own
GOOD = test_cli.GOOD.replace("name: clitest", "name: clibackend").split("objective:")[0]

BLOCK_RAY = "import sys; sys.modules['ray'] = None; "
"""Prefix of a `python -c` program: `import ray` fails in it as if Ray were not installed."""


def env_without_ray(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ray_tmp = tmp_path / "raytmp"
    ray_tmp.mkdir(exist_ok=True)
    return {**env, "RAY_TMPDIR": str(ray_tmp), **extra}


def cli(tmp_path: Path, *args: str, prelude: str = "", timeout: float = 60,
        **env: str) -> subprocess.CompletedProcess[str]:
    """`foldrunner ARGS` in a subprocess (`python -c`, so that ``prelude`` runs first)."""
    program = (f"{prelude}import sys; sys.argv = ['foldrunner', *sys.argv[1:]];"
               " from foldrunner.ui.cli import main; main()")
    return subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=timeout, env=env_without_ray(tmp_path, **env))


def write_spec(tmp_path: Path, text: str = GOOD) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_refused(r: subprocess.CompletedProcess[str], run_dir: Path, *wanted: str) -> None:
    """Exit 2, one message without a traceback naming ``wanted``, nothing written."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.startswith("foldrunner: error: "), r.stderr
    for text in wanted:
        assert text in r.stderr, (text, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    assert r.stdout == ""
    assert not run_dir.exists()  # nothing launched, nothing written


# ---------------------------------------------------------------- Ray not installed
@pytest.mark.parametrize("how", ["--backend ray", "backend: ray"])
def test_ray_not_importable_exit_2_saying_what_to_install(tmp_path: Path, how: str) -> None:
    if how == "--backend ray":
        spec, args = write_spec(tmp_path), ["--backend", "ray"]
    else:
        spec, args = write_spec(tmp_path, GOOD + "backend: ray\n"), []
    run_dir = tmp_path / "run"
    r = cli(tmp_path, "run", str(spec), "--run-dir", str(run_dir), *args, prelude=BLOCK_RAY)
    assert_refused(r, run_dir, "backend ray needs Ray", "install it with pip install 'foldrunner[ray]'")


# ---------------------------------------------------------------- nothing listens
def test_an_address_where_nothing_listens_exit_2_within_seconds(tmp_path: Path) -> None:
    port = free_port()
    run_dir = tmp_path / "run"
    started = time.monotonic()
    r = cli(tmp_path, "run", str(write_spec(tmp_path)), "--run-dir", str(run_dir),
            "--backend", "ray", "--address", f"127.0.0.1:{port}", timeout=30)
    assert time.monotonic() - started < 5.0, "not refused within 5 s"
    assert_refused(r, run_dir, f"cannot reach the Ray cluster at 127.0.0.1:{port} (from --address)",
                   "nothing listens there")


def test_the_specs_address_and_ray_address_are_named(tmp_path: Path) -> None:
    port = free_port()
    run_dir = tmp_path / "run"
    spec = write_spec(tmp_path, GOOD + f"backend: ray\nray:\n  address: 127.0.0.1:{port}\n")
    r = cli(tmp_path, "run", str(spec), "--run-dir", str(run_dir))
    assert_refused(r, run_dir, f"at 127.0.0.1:{port} (from ray.address)")
    r = cli(tmp_path, "run", str(write_spec(tmp_path)), "--run-dir", str(run_dir), "--backend", "ray",
            RAY_ADDRESS=f"127.0.0.1:{port}")
    assert_refused(r, run_dir, f"at 127.0.0.1:{port} (from RAY_ADDRESS; ray.address is auto)")


def test_auto_without_a_cluster_exit_2(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    r = cli(tmp_path, "run", str(write_spec(tmp_path)), "--run-dir", str(run_dir), "--backend", "ray")
    assert_refused(r, run_dir, "no Ray cluster to connect to: ray.address is auto",
                   "RAY_ADDRESS is not set", "ray start --head")


# ---------------------------------------------------------------- GPUs, flags
def test_a_gpu_list_is_refused_with_ray(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    spec = write_spec(tmp_path)
    r = cli(tmp_path, "run", str(spec), "--run-dir", str(run_dir), "--backend", "ray", "--gpus", "0,1",
            prelude=BLOCK_RAY)  # refused before Ray is needed
    assert_refused(r, run_dir, "--gpus 0,1: an explicit list of GPUs cannot be used with backend ray")
    # in the spec: the key path and its line, from `run` and `plan` alike
    bad = write_spec(tmp_path, GOOD.replace("gpus: none", "gpus: [0, 1]") + "backend: ray\n")
    for command in (["run", str(bad), "--run-dir", str(run_dir)], ["plan", str(bad)]):
        r = cli(tmp_path, *command, prelude=BLOCK_RAY)
        assert_refused(r, run_dir, "resources.gpus (line 10): an explicit list of GPUs ([0, 1])"
                       " cannot be used with backend: ray")
    # a list in the spec, the backend from the command line
    listed = write_spec(tmp_path, GOOD.replace("gpus: none", "gpus: [0, 1]"))
    r = cli(tmp_path, "run", str(listed), "--run-dir", str(run_dir), "--backend", "ray", prelude=BLOCK_RAY)
    assert_refused(r, run_dir, "resources.gpus: an explicit list of GPUs ([0, 1]) cannot be used"
                   " with --backend ray")


def test_bad_flags(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    spec = str(write_spec(tmp_path))
    r = cli(tmp_path, "run", spec, "--run-dir", str(run_dir), "--address", "10.0.0.5:6379")
    assert_refused(r, run_dir, "--address 10.0.0.5:6379: an address is for the ray backend",
                   "add --backend ray")
    r = cli(tmp_path, "run", spec, "--run-dir", str(run_dir), "--backend", "ray", "--address", "head")
    assert_refused(r, run_dir, "--address 'head': invalid address 'head': the port is missing")
    r = cli(tmp_path, "run", spec, "--run-dir", str(run_dir), "--backend", "slurm")
    assert r.returncode == 2 and "'slurm' is not one of 'local', 'ray'" in r.stderr, r.stderr
    assert not run_dir.exists()


def test_help_names_the_flags(tmp_path: Path) -> None:
    r = cli(tmp_path, "run", "--help")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    for expected in ("--backend [local|ray]", "Where folds run: local (this machine) or ray",
                     "pip install 'foldrunner[ray]'", "--address HOST:PORT",
                     "Overrides ray.address; needs the ray backend",
                     "with --backend ray: folds in flight across the cluster"):
        assert expected in text, (expected, text)


def test_plan_says_which_backend(tmp_path: Path) -> None:
    spec = str(write_spec(tmp_path))
    cases = {(): "; backend local",
             ("-o", "backend=ray", "-o", "ray.address=10.0.0.5:6379"): "; backend ray at 10.0.0.5:6379",
             ("-o", "backend=ray", "-o", "ray.address=local"):
                 "; backend ray at local (a private Ray on this machine)",
             ("-o", "backend=ray"): "; backend ray at auto (no cluster found now)"}
    for args, expected in cases.items():
        r = cli(tmp_path, "plan", spec, *args, prelude=BLOCK_RAY)  # plan needs no Ray
        assert r.returncode == 0, r.stderr
        head = r.stdout.splitlines()[0]
        assert head.startswith("clibackend: 2 trial(s) x 1 replicate(s) x 2 fold(s) = 4 folds; plan ")
        assert head.endswith(expected), head
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- the local backend as before
@pytest.mark.parametrize("args", [[], ["--backend", "local"]])
def test_the_local_backend_runs_as_before_without_ray(tmp_path: Path, args: list[str]) -> None:
    """With Ray not importable, a local run (the default, or --backend local) is unchanged."""
    run_dir = tmp_path / "run"
    spec = write_spec(tmp_path, GOOD + ("backend: ray\n" if args else ""))  # --backend wins
    r = cli(tmp_path, "run", str(spec), "--run-dir", str(run_dir), *args, prelude=BLOCK_RAY)
    assert r.returncode == 0, r.stderr + r.stdout
    assert len([line for line in r.stdout.splitlines() if " attempt 1: ok " in line]) == 4
    assert (run_dir / "results.csv").exists()
    assert "ray" not in r.stderr.lower()


def test_the_checks_pass_with_ray_installed_and_something_listening(tmp_path: Path) -> None:
    """The whole check with the real import of Ray, against a socket that listens (no Ray):
    it passes, and it has started no process (importing Ray starts none)."""
    program = (
        "import sys, psutil\n"
        "from foldrunner.config.spec import load_spec\n"
        "from foldrunner.orchestrate.api import RunOptions\n"
        "from foldrunner.orchestrate.backend import check_backend, resolve_address\n"
        "s = load_spec({'name': 't', 'entrypoint': 'm:f', 'backend': 'ray'})\n"
        "options = RunOptions(address=sys.argv[1])\n"
        "check_backend(s, options)\n"
        "print(resolve_address(s, options), 'ray' in sys.modules, psutil.Process().children(recursive=True))\n"
    )
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        r = subprocess.run([sys.executable, "-c", program, address], capture_output=True, text=True,
                           cwd=tmp_path, timeout=60, env=env_without_ray(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [address, "True", "[]"]
