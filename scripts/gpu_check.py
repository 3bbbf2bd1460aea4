#!/usr/bin/env python3
"""foldrunner on real NVIDIA GPUs: each check PASS or FAIL, with the figures it measured.

    python scripts/gpu_check.py [--framework auto|tensorflow|torch|cupy] [--mib 256]

It needs the project and one GPU framework (TensorFlow, PyTorch or CuPy; ``auto`` takes
the first installed, in that order). Real folds run through ``foldrunner.run``, each
allocating memory on its GPU (``scripts/_gpu_folds.py``), while a thread reads NVML ten
times a second. The checks:

1. inventory: foldrunner's NVML inventory against ``nvidia-smi --query-gpu=index,uuid,
   memory.total``;
2. pinning: every fold sees exactly one device, its own (the UUID the CUDA driver gives
   the fold against NVML's UUID of the fold's GPU), and shows up on that GPU only;
3. memory: a fold's GPU memory is read while it runs (``peak_gpu_mb``, NVML per
   process) and is given back after it ends;
4. max_gpu_memory: a fold whose grandchild holds the memory ends as ``memory``, the
   grandchild with it;
5. per_gpu: 2: two folds on one GPU at once, never three;
6. zygote: folds forked from a zygote that imported the framework, with
   ``CUDA_VISIBLE_DEVICES`` set after that import, see their own GPU (or the zygote is
   refused with a clear note).

Without a GPU it says so and exits 0; otherwise it exits 0 when every check passed, else 1.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _gpu_folds  # noqa: E402
from foldrunner.gpu.inventory import GpuInfo, Inventory, NoGpus, NvmlInventory  # noqa: E402
from foldrunner.gpu.pids import PidMode  # noqa: E402

MiB = 1024 * 1024
SLACK_MIB = 64
"""Memory a GPU may still show used after our folds ended, above what it used before."""
GIVE_BACK_WAIT = 10.0
"""Seconds the memory of ended folds has to leave the GPU."""
SAMPLE_EVERY = 0.1


@dataclass
class Outcome:
    name: str
    ok: bool
    figures: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.figures}"


@dataclass
class Sample:
    t: float
    gpus: dict[int, GpuInfo]


@dataclass
class Sampler:
    """NVML read ten times a second in a thread while folds run (``foldrunner.run`` keeps
    the main thread for its signals)."""

    inventory: Inventory
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(Sample(time.time(), {d.index: d for d in self.inventory.devices()}))
            self._stop.wait(SAMPLE_EVERY)


def parse_smi(text: str) -> dict[int, tuple[str, int]]:
    """``nvidia-smi --query-gpu=index,uuid,memory.total --format=csv,noheader,nounits``:
    index -> (uuid, MiB)."""
    out = {}
    for row in csv.reader(io.StringIO(text)):
        if len(row) >= 3 and row[0].strip().isdigit():
            out[int(row[0])] = (row[1].strip(), int(float(row[2].strip())))
    return out


def real_smi() -> str:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise FileNotFoundError("nvidia-smi is not on PATH")
    return subprocess.run([exe, "--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True, check=True, timeout=60).stdout


def check_inventory(devices: list[GpuInfo], smi: Callable[[], str]) -> Outcome:
    name = "inventory vs nvidia-smi"
    try:
        rows = parse_smi(smi())
    except (OSError, subprocess.SubprocessError) as exc:
        return Outcome(name, False, f"nvidia-smi could not be read: {exc}")
    ours = {d.index: (d.uuid, d.total_bytes // MiB) for d in devices}
    diffs = [f"GPU {i}: foldrunner {ours.get(i)} vs nvidia-smi {rows.get(i)}"
             for i in sorted(set(ours) | set(rows)) if ours.get(i) != rows.get(i)]
    figures = "; ".join(f"GPU {i} {u} {m} MiB" for i, (u, m) in sorted(ours.items()))
    if diffs:
        return Outcome(name, False, f"{len(diffs)} difference(s): {'; '.join(diffs)}")
    return Outcome(name, True, f"{len(ours)} GPU(s) agree: {figures}")


def concurrency(spans: list[tuple[float, float]]) -> tuple[int, float]:
    """The most spans open at once and how long at least two were open (seconds)."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    on = most = 0
    both, since = 0.0, 0.0
    for t, d in events:
        if on >= 2:
            both += t - since
        on += d
        since = t
        most = max(most, on)
    return most, both


class Checker:
    """The fold checks: real folds through ``foldrunner.run`` on ``inventory()``'s GPUs."""

    def __init__(self, inventory: Callable[[], Inventory], framework: str, work: Path,
                 mib: int = 256, hold_s: float = 3.0, fake_root: str | None = None) -> None:
        self.inventory, self.framework, self.work = inventory, framework, work
        self.mib, self.hold_s, self.fake_root = mib, hold_s, fake_root
        self.devices = inventory().devices()
        self.uuid = {d.index: d.uuid for d in self.devices}
        self.n = len(self.devices)
        self.mode = self.devices[0].pid_mode

    # -- running folds -------------------------------------------------------------
    def run(self, name: str, entry: str, folds: int, *, per_gpu: int = 1, zygote: bool = False,
            spares: bool = True,
            params: dict[str, Any] | None = None, limits: dict[str, Any] | None = None,
            ) -> tuple[Any, list[Sample], list[str], dict[int, int]]:
        from foldrunner.orchestrate.api import RunOptions, run

        base = {"framework": self.framework, "mib": self.mib, "hold_s": self.hold_s}
        env = {"TF_CPP_MIN_LOG_LEVEL": "2"}
        if self.fake_root is not None:
            env[_gpu_folds.FAKE_ENV] = self.fake_root
        preload = [] if self.framework == "fake" else [self.framework]
        spec = {
            "name": name, "entrypoint": f"_gpu_folds:{entry}", "workdir": str(HERE),
            "preload": preload, "params": {**base, **(params or {})}, "cv": {"folds": folds},
            "resources": {"gpus": "auto", "per_gpu": per_gpu, "min_free_memory": 0,
                          "zygote": zygote, "spares": spares},
            "limits": {"timeout": "3m", "grace": "5s", **(limits or {})},
            "retry": {"attempts": 1}, "env": env,
        }
        notes: list[str] = []
        inv = self.inventory()
        baseline = {d.index: d.used_bytes for d in inv.devices()}
        with Sampler(self.inventory()) as sampler:
            df = run(spec, run_dir=self.work / name, notes=notes.append,
                     options=RunOptions(inventory=inv))
        if sampler.samples and sampler.samples[-1].gpus:
            # in a container the mode is decided once a fold's process is on a GPU
            self.mode = next(iter(sampler.samples[-1].gpus.values())).pid_mode
        return df, sampler.samples, notes, baseline

    def given_back(self, pids: set[int], baseline: dict[int, int]) -> tuple[bool, str]:
        """Whether, within :data:`GIVE_BACK_WAIT`, no pid of ``pids`` holds GPU memory and
        every GPU is back to its baseline (+ :data:`SLACK_MIB`)."""
        inv = self.inventory()
        deadline = time.monotonic() + GIVE_BACK_WAIT
        t0 = time.monotonic()
        while True:
            devs = {d.index: d for d in inv.devices()}
            held = sorted(p.pid for d in devs.values() for p in d.processes if p.pid in pids)
            over = {i: d.used_bytes // MiB for i, d in devs.items()
                    if d.used_bytes > baseline.get(i, 0) + SLACK_MIB * MiB}
            if not held and not over:
                after = ", ".join(f"GPU {i} {baseline.get(i, 0) // MiB}->{d.used_bytes // MiB} MiB"
                                  for i, d in sorted(devs.items()))
                return True, f"given back in {time.monotonic() - t0:.1f}s ({after})"
            if time.monotonic() >= deadline:
                return False, (f"after {GIVE_BACK_WAIT:g}s: pids {held} still hold memory; GPUs over "
                               f"their baseline: {over} MiB")
            time.sleep(0.2)

    def _fold_uuid_ok(self, row: Any) -> tuple[bool, str]:
        gpu = int(row["gpu"])
        if row["metric_visible"] != 1:
            return False, f"{row['fold_id']} saw {row['metric_visible']} devices ({row['metric_uuid_error']})"
        if row["metric_cuda_visible_devices"] != str(gpu):
            return False, f"{row['fold_id']} had CUDA_VISIBLE_DEVICES={row['metric_cuda_visible_devices']!r}, not {gpu}"
        if row["metric_uuid"] != self.uuid[gpu]:
            return False, (f"{row['fold_id']} on GPU {gpu} saw {row['metric_uuid']}, NVML's GPU {gpu} is "
                           f"{self.uuid[gpu]} (CUDA's device order is not NVML's: CUDA_DEVICE_ORDER=PCI_BUS_ID?)")
        return True, ""

    @staticmethod
    def _failed(df: Any) -> str:
        bad = df[df["status"] != "ok"]
        return "; ".join(f"{r.fold_id} {r.status}: {r.error}" for r in bad.itertuples())

    def _seen_on(self, samples: list[Sample], pid: int) -> set[int]:
        return {i for s in samples for i, d in s.gpus.items() for p in d.processes if p.pid == pid}

    # -- the checks ----------------------------------------------------------------
    def pinning_and_memory(self) -> list[Outcome]:
        folds = 2 * self.n
        df, samples, notes, baseline = self.run("pinning", "probe", folds)
        pin, mem = "every fold sees only its GPU", "a fold's GPU memory read while it runs, given back after"
        if (df["status"] != "ok").any():
            why = self._failed(df)
            return [Outcome(pin, False, why), Outcome(mem, False, why)]
        problems: list[str] = []
        per_gpu: dict[int, int] = {}
        for _, row in df.iterrows():
            ok, why = self._fold_uuid_ok(row)
            if not ok:
                problems.append(why)
            if self.mode is not PidMode.PER_GPU:
                seen = self._seen_on(samples, int(row["metric_pid"]))
                if seen != {int(row["gpu"])}:
                    problems.append(f"{row['fold_id']} (pid {row['metric_pid']}) on GPU {row['gpu']} "
                                    f"was seen by NVML on GPUs {sorted(seen)}")
            per_gpu[int(row["gpu"])] = per_gpu.get(int(row["gpu"]), 0) + 1
        where = ("NVML saw each fold's pid on its GPU only" if self.mode is not PidMode.PER_GPU
                 else "NVML pids not usable here (per-GPU fallback): the UUIDs alone")
        out = [Outcome(pin, not problems, "; ".join(problems) if problems else
                       f"{folds} folds, each saw 1 device, its GPU's UUID; folds per GPU {per_gpu}; {where}")]
        peaks = [float(v) for v in df["peak_gpu_mb"]]
        low = [f"{r.fold_id} {r.peak_gpu_mb}" for r in df.itertuples() if not r.peak_gpu_mb >= self.mib]
        back, figures = self.given_back({int(p) for p in df["metric_pid"]}, baseline)
        mem_ok = not low and back
        out.append(Outcome(mem, mem_ok,
                           f"peak_gpu_mb {min(peaks):.0f}..{max(peaks):.0f} MiB for {self.mib} MiB allocated "
                           f"({self.mode.value})" + (f", too low: {low}" if low else "") + f"; {figures}"))
        return out

    def gpu_memory_kill(self) -> Outcome:
        name = "max_gpu_memory ends a fold whose grandchild holds the memory"
        hog = max(4 * self.mib, 1024)
        limit = 512
        if self.mode is PidMode.PER_GPU:  # the limit counts the GPU's used memory
            limit += max(d.used_bytes for d in self.inventory().devices()) // MiB
        df, _, notes, baseline = self.run("gpu-kill", "grandchild_hog", 1,
                                          params={"mib": hog, "hold_s": 170},
                                          limits={"max_gpu_memory": f"{limit}MiB"})
        row = df.iloc[0]
        run_dir = self.work / "gpu-kill"
        pid_file = run_dir / f"grandchild.{row['fold_id']}.pid"
        ready = (run_dir / f"grandchild.{row['fold_id']}.ready").exists()
        gc = int(pid_file.read_text()) if pid_file.exists() else None
        import psutil

        gone = gc is not None and (not psutil.pid_exists(gc) or psutil.Process(gc).status() == psutil.STATUS_ZOMBIE)
        back, figures = self.given_back({gc} if gc else set(), baseline)
        ok = (row["status"] == "memory" and "max_gpu_memory" in str(row["error"]) and ready
              and gone and back)
        return Outcome(name, ok, f"status {row['status']} after {row['duration_s']:.1f}s ({row['error']}); "
                       f"grandchild {gc} allocated {hog} MiB: {'yes' if ready else 'no'}, "
                       f"gone: {'yes' if gone else 'NO'}; limit {limit} MiB; peak_gpu_mb "
                       f"{row['peak_gpu_mb']}; {figures}")

    def two_per_gpu(self) -> Outcome:
        name = "two folds per GPU with per_gpu: 2"
        df, samples, _, _ = self.run("per-gpu-2", "probe", 4 * self.n, per_gpu=2)
        if (df["status"] != "ok").any():
            return Outcome(name, False, self._failed(df))
        figures, ok = [], True
        for gpu in sorted(self.uuid):
            rows = df[df["gpu"] == gpu]
            most, both = concurrency([(r.metric_t_alloc, r.metric_t1) for r in rows.itertuples()])
            seen = 0
            if self.mode is not PidMode.PER_GPU:
                pids = {int(p) for p in rows["metric_pid"]}
                seen = max((sum(1 for p in s.gpus[gpu].processes if p.pid in pids)
                            for s in samples if gpu in s.gpus), default=0)
            ok = ok and most == 2 and both > 0 and (self.mode is PidMode.PER_GPU or seen == 2)
            figures.append(f"GPU {gpu}: {len(rows)} folds, at most {most} at once, two together "
                           f"{both:.1f}s" + (f", NVML saw {seen} at once" if self.mode is not PidMode.PER_GPU else ""))
        return Outcome(name, ok, "; ".join(figures))

    def zygote(self) -> Outcome:
        what = "nothing to preload" if self.framework == "fake" else f"preload {self.framework}"
        name = f"zygote ({what}, CUDA_VISIBLE_DEVICES set after the import)"
        # no spares: every fold is forked by the zygote (the plain fold server preloads
        # nothing of the spec's), so a fold that finds the framework imported came from it
        df, _, notes, _ = self.run("zygote", "probe", 2 * self.n, zygote=True, spares=False)
        refused = [n for n in notes if "zygote" in n]
        if (df["status"] != "ok").any():
            return Outcome(name, False, self._failed(df) + (f"; notes: {refused}" if refused else ""))
        problems = [why for _, row in df.iterrows() for ok, why in [self._fold_uuid_ok(row)] if not ok]
        forked = int(df["metric_framework_imported_before"].sum())
        if self.framework != "fake" and forked < len(df) and not refused:
            problems.append(f"only {forked} of {len(df)} folds found {self.framework} imported: "
                            "the others did not come from the zygote")
        if refused and not problems:
            return Outcome(name, True, f"refused with a clear note: {refused[0]}; {len(df)} folds ok")
        return Outcome(name, not problems, "; ".join(problems) if problems else
                       f"{len(df)} folds forked after the import, each saw its own GPU only")


def pick_framework(choice: str) -> str | None:
    if choice != "auto":
        return choice
    found = _gpu_folds.installed_frameworks()
    return found[0] if found else None


def main(argv: list[str] | None = None, *, inventory: Callable[[], Inventory] = NvmlInventory,
         smi: Callable[[], str] = real_smi, fake_root: str | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--framework", default="auto", choices=["auto", *_gpu_folds.FRAMEWORKS, "fake"],
                    help="what the folds allocate GPU memory with (fake: the tests' fake NVML)")
    ap.add_argument("--mib", type=int, default=256, help="MiB each probing fold allocates")
    ap.add_argument("--hold", type=float, default=3.0, help="seconds each probing fold holds it")
    ap.add_argument("--keep", metavar="DIR", help="keep the run dirs here (default: a temporary dir)")
    args = ap.parse_args(argv)
    try:
        devices = inventory().devices()
    except NoGpus as exc:
        devices, why = [], str(exc)
    else:
        why = "NVML sees none"
    if not devices:
        print(f"gpu_check: no NVIDIA GPU here ({why}): nothing to check.")
        return 0
    framework = pick_framework(args.framework)
    print(f"gpu_check: {len(devices)} GPU(s): "
          + "; ".join(f"{d.index} {d.name} {d.total_bytes // MiB} MiB" for d in devices)
          + f"; framework: {framework or 'none'}; {devices[0].pid_mode.line}", flush=True)
    outcomes = [check_inventory(devices, smi)]
    print(outcomes[-1].line(), flush=True)
    if framework is None:
        outcomes.append(Outcome("fold checks", False, "no GPU framework installed "
                                f"({', '.join(_gpu_folds.FRAMEWORKS)}): the folds need one to allocate"))
        print(outcomes[-1].line())
    else:
        with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
            work = Path(args.keep) if args.keep else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            checker = Checker(inventory, framework, work, mib=args.mib, hold_s=args.hold,
                              fake_root=fake_root)
            for step in (checker.pinning_and_memory, checker.gpu_memory_kill, checker.two_per_gpu,
                         checker.zygote):
                t0 = time.monotonic()
                try:
                    got = step()
                except Exception as exc:  # noqa: BLE001 - a check that breaks is a FAIL, the rest go on
                    got = Outcome(step.__name__, False, f"the check itself failed: {type(exc).__name__}: {exc}")
                for o in got if isinstance(got, list) else [got]:
                    outcomes.append(o)
                    print(f"{o.line()}  [{time.monotonic() - t0:.1f}s]", flush=True)
    failed = sum(not o.ok for o in outcomes)
    print(f"gpu_check: {len(outcomes) - failed} PASS, {failed} FAIL")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
