#!/usr/bin/env python3
"""Soak test of the orchestrator: thousands of folds with injected faults, no leaks.

    python scripts/soak.py                      # 2,000 folds, 2 workers (a few minutes)
    python scripts/soak.py --folds 200          # a quick check of the script itself

One run of ``--folds`` folds (entry point ``scripts/_faults.py:soak``) goes through
``foldrunner.run`` in a child orchestrator process of its own session. Each fold's fault
is a pure function of its index (``_faults.soak_kind``), one period of 100 folds holding:
85 clean folds (ok); 1 hang past ``limits.timeout`` = 1s (timeout); os.abort(), a
segfault (``ctypes.string_at(0)``) and ``sys.exit(3)`` (crashed); 2 exceptions (error);
2 leaked ``setsid`` grandchildren (sleep 600), 2 with a clean environment (``env={}``:
no marker), 1 double fork (``sh -c 'sleep 600 &'`` in a new session) and 3 short-lived
``setsid`` children that exit on their own (zombie candidates), all returning at once
(ok); 1 non-daemon thread left running after the result (ok, lingered, killed after
``limits.exit_timeout`` = 1s). ``retry.attempts`` is 1: every status is final.

Every process a fold starts is recorded under a pids directory (the fold param
``pids_dir``). Every ``--interval`` seconds a table line shows the orchestrator's RSS,
open fds, threads, its zombie and live children (the orchestrator process only: not
the fork server nor the folds), and how many recorded grandchildren outlived their
fold by more than ``grace`` + 3 s.

Goals (PASS/FAIL lines; exit 1 on any FAIL):
  - every fold ends with its expected status (and `lingered` for the linger folds);
  - no grandchild outlives its fold (by grace + 3 s) while the run goes;
  - nothing left behind at the end: no recorded grandchild, no process of this run
    carrying the fold marker (FOLDRUNNER_FOLD), nothing in the orchestrator's session;
  - no zombie among the orchestrator's children once ``run`` has returned;
  - orchestrator RSS growth over the second half of the folds < 2 MiB (with 2,000 folds;
    from the samples whose completed-fold count was in the second half).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from foldrunner.procs import proctree  # noqa: E402 - after the path above

TAG_ENV = "FOLDRUNNER_HARNESS_TAG"  # in the spec's env: every fold process (and its children) carries it
MiB = 1024 * 1024


# ---------------------------------------------------------------- shared with chaos.py

def _environ(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return None


stat_of = proctree.stat_ids
"""``(state, pgid, sid)`` of pid from /proc, None when gone."""


def describe(pid: int) -> str:
    import psutil

    try:
        p = psutil.Process(pid)
        status = p.status()
        try:
            cmd = " ".join(p.cmdline())[:60]
        except psutil.Error:
            cmd = ""
        return f"{pid} ({cmd or p.name()}, {status})"
    except psutil.Error:
        return f"{pid} (gone)"


def marked_of_run(tag: str, run_ids: set[str]) -> tuple[list[int], list[int]]:
    """Live (non-zombie) processes carrying the fold marker: (this run's, others')."""
    key = f"{TAG_ENV}={tag}".encode()
    ours, foreign = [], []
    for p in proctree.marked_processes(""):
        st = stat_of(p.pid)
        if st is None or st[0] in "ZX":
            continue
        marker = proctree.read_marker(p.pid) or ""
        env = _environ(p.pid) or b""
        if key in env.split(b"\0") or any(marker.startswith(r + "/") for r in run_ids):
            ours.append(p.pid)
        else:
            foreign.append(p.pid)
    return ours, foreign


def tagged(tag: str) -> list[int]:
    """Live processes whose environment holds this harness's tag (marker or not)."""
    import psutil

    key = f"{TAG_ENV}={tag}".encode()
    out = []
    for pid in psutil.pids():
        env = _environ(pid)
        if env and key in env.split(b"\0"):
            st = stat_of(pid)
            if st and st[0] not in "ZX":
                out.append(pid)
    return out


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is ``sid``."""
    import psutil

    out = []
    for pid in psutil.pids():
        st = stat_of(pid)
        if st and st[2] == sid and st[0] not in "ZX":
            out.append(pid)
    return out


def read_records(pids_dir: Path) -> list[dict]:
    """The grandchildren the folds recorded: fold_id, attempt, kind, pid, t."""
    out = []
    if not pids_dir.is_dir():
        return out
    for f in pids_dir.iterdir():
        if f.name.startswith("."):
            continue
        fold_id, attempt, kind, pid = f.name.rsplit(".", 3)
        try:
            t = float(f.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            t = time.time()
        out.append({"fold_id": fold_id, "attempt": int(attempt), "kind": kind, "pid": int(pid), "t": t})
    return out


def record_alive(rec: dict) -> bool:
    """Whether a recorded grandchild still runs (a zombie or a reused pid does not count)."""
    import psutil

    try:
        p = psutil.Process(rec["pid"])
        if p.create_time() > rec["t"] + 1.0:  # the pid was reused by a later process
            return False
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def zombie_children(pid: int) -> list[int]:
    from foldrunner.procs import proctree

    return [c for c in proctree.child_pids(pid) if (stat_of(c) or ("?",))[0] == "Z"]


def kill_everything(tag: str, pids_dir: Path | None, sessions: list[int]) -> int:
    """SIGKILL what this harness may have left: its sessions, tagged processes, recorded pids."""
    n = 0
    me = os.getpid()
    victims: set[int] = set()
    for sid in sessions:
        victims.update(session_members(sid))
    victims.update(tagged(tag))
    if pids_dir is not None:
        victims.update(r["pid"] for r in read_records(pids_dir) if record_alive(r))
    victims.discard(me)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
            n += 1
        except OSError:
            pass
    return n


def journal_query(run_dir: Path, sql: str, args: tuple = ()) -> list[tuple] | None:
    """Read-only query of RUN_DIR/journal.sqlite; None when it is not there (yet)."""
    path = run_dir / "journal.sqlite"
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return None
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.Error:
        return None
    finally:
        db.close()


def run_ids_of(run_dir: Path) -> set[str]:
    rows = journal_query(run_dir, "SELECT value FROM meta WHERE key = 'run_id'") or []
    return {str(r[0]) for r in rows}


def raise_on_term() -> None:
    """SIGTERM and SIGHUP become KeyboardInterrupt, so every ``finally`` runs."""
    def handler(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, handler)


def stop_session(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the session a child leads (it leads its own), wait, then SIGKILL it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except OSError:
            pass
        try:
            proc.wait(grace + 5)
        except subprocess.TimeoutExpired:
            pass
    for pid in session_members(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def verdict(ok: bool, text: str, failures: list[str]) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {text}")
    if not ok:
        failures.append(text)


# ---------------------------------------------------------------- the orchestrator child

def orchestrate(spec_path: str, run_dir: str, out_path: str) -> int:
    """The child: run the spec with foldrunner.run, then measure itself and write JSON."""
    import psutil

    import foldrunner

    spec = json.loads(Path(spec_path).read_text())
    me = psutil.Process()
    out: dict = {}
    try:
        df = foldrunner.run(spec, run_dir=run_dir)
        out["rows"] = len(df)
    except BaseException as e:  # noqa: BLE001 - reported by the parent
        out["error"] = f"{type(e).__name__}: {e}"
    for label, wait in (("end", 0.0), ("end+1s", 1.0)):
        time.sleep(wait)
        out[label] = {
            "rss_mib": me.memory_info().rss / MiB, "fds": me.num_fds(), "threads": me.num_threads(),
            "zombies": [describe(z) for z in zombie_children(me.pid)],
            "children": [describe(c.pid) for c in me.children() if c.status() != psutil.STATUS_ZOMBIE],
        }
    Path(out_path).write_text(json.dumps(out))
    return 0 if "error" not in out else 1


# ---------------------------------------------------------------- the soak

def sample(pid: int, run_dir: Path, pids_dir: Path, slack: float) -> dict | None:
    import psutil

    try:
        p = psutil.Process(pid)
        with p.oneshot():
            if p.status() == psutil.STATUS_ZOMBIE:  # exited, not yet reaped: nothing to measure
                return None
            s = {"rss": p.memory_info().rss / MiB, "fds": p.num_fds(), "threads": p.num_threads()}
        kids = p.children()
    except psutil.Error:
        return None
    s["zombies"] = len(zombie_children(pid))
    s["children"] = sum(1 for k in kids if (stat_of(k.pid) or ("Z",))[0] != "Z")
    rows = journal_query(run_dir, "SELECT fold_id, attempt, status, ended_at FROM attempts") or []
    s["done"] = sum(1 for r in rows if r[2] != "running")
    ended = {(r[0], r[1]): r[3] for r in rows if r[3] is not None}
    now = time.time()
    late = []
    for rec in read_records(pids_dir):
        end = ended.get((rec["fold_id"], rec["attempt"]))
        if end is not None and now - end > slack and record_alive(rec):
            late.append(rec)
    s["late"] = late
    s["t"] = time.monotonic()
    return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", type=int, default=2000, help="folds in all (default 2000)")
    ap.add_argument("--workers", type=int, default=2, help="concurrent folds (default 2)")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between samples (default 2)")
    ap.add_argument("--rss-goal", type=float, default=2.0,
                    help="MiB of orchestrator RSS growth allowed over the second half (default 2)")
    ap.add_argument("--spares", action="store_true", help="resources.spares: true (default false)")
    ap.add_argument("--timeout", type=float, default=1800, help="give up on the run after this (s)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (run dir, logs) and print it")
    ap.add_argument("--orchestrate", nargs=3, metavar=("SPEC", "RUN_DIR", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.orchestrate:
        return orchestrate(*args.orchestrate)

    from _faults import SOAK_EXPECTED, soak_index, soak_kind

    raise_on_term()
    grace = 1.0
    tag = uuid.uuid4().hex[:12]
    tmp = Path(tempfile.mkdtemp(prefix="foldrunner-soak-"))
    run_dir, pids_dir = tmp / "run", tmp / "pids"
    pids_dir.mkdir()
    if args.folds > 1000:  # cv.folds is capped at 1000: blocks of 100 folds, a grid param
        blocks = -(-args.folds // 100)
        if blocks * 100 != args.folds:
            print(f"note: {args.folds} folds rounded up to {blocks * 100} (blocks of 100)")
            args.folds = blocks * 100
        params = {"pids_dir": str(pids_dir), "block_size": 100}
        search = {"search": {"grid": {"block": list(range(blocks))}}}
        cv_folds = 100
    else:
        params, search, cv_folds = {"pids_dir": str(pids_dir)}, {}, args.folds
    spec = {
        "name": "soak", "entrypoint": "_faults:soak", "workdir": str(HERE),
        "params": params, **search, "cv": {"folds": cv_folds},
        "resources": {"gpus": "none", "workers": args.workers, "spares": args.spares},
        "limits": {"timeout": "1s", "grace": f"{grace:g}s", "exit_timeout": "1s"},
        "retry": {"attempts": 1}, "env": {TAG_ENV: tag}, "output": {"dir": str(run_dir)},
    }
    (tmp / "spec.json").write_text(json.dumps(spec))
    out_json = tmp / "orchestrator.json"
    failures: list[str] = []
    samples: list[dict] = []
    proc = None
    interrupted = False
    t0 = time.monotonic()
    try:
        with open(tmp / "orchestrator.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--orchestrate",
                 str(tmp / "spec.json"), str(run_dir), str(out_json)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        print(f"soak: {args.folds} folds, {args.workers} workers, spares {args.spares}, "
              f"orchestrator pid {proc.pid}, tmp {tmp}")
        print(f"{'t(s)':>6} {'done':>6} {'rss MiB':>8} {'fds':>5} {'thr':>4} {'zomb':>5} {'kids':>5} {'gc late':>8}")
        next_t = time.monotonic()
        while proc.poll() is None:
            if time.monotonic() - t0 > args.timeout:
                failures.append(f"the run did not finish within {args.timeout:.0f}s")
                print(f"FAIL  the run did not finish within {args.timeout:.0f}s; stopping it")
                break
            s = sample(proc.pid, run_dir, pids_dir, grace + 3.0)
            if s is not None:
                samples.append(s)
                print(f"{s['t'] - t0:6.1f} {s['done']:6d} {s['rss']:8.1f} {s['fds']:5d} {s['threads']:4d} "
                      f"{s['zombies']:5d} {s['children']:5d} {len(s['late']):8d}", flush=True)
            next_t += args.interval
            while proc.poll() is None and time.monotonic() < next_t:
                time.sleep(0.05)
    except KeyboardInterrupt as e:
        interrupted = True
        print(f"\ninterrupted ({e or 'SIGINT'}): stopping the orchestrator")
    finally:
        if proc is not None:
            stop_session(proc, grace)
    wall = time.monotonic() - t0

    try:
        report(args, proc, tmp, run_dir, pids_dir, out_json, tag, samples, wall, failures,
               SOAK_EXPECTED, soak_kind, soak_index, interrupted, grace)
    except KeyboardInterrupt:
        failures.append("interrupted while reporting")
    except Exception as e:  # noqa: BLE001 - the script must say what went wrong, not crash
        import traceback

        traceback.print_exc()
        failures.append(f"the report itself failed: {type(e).__name__}: {e}")
        print(f"FAIL  the report itself failed: {type(e).__name__}: {e}")
    finally:
        killed = kill_everything(tag, pids_dir, [proc.pid] if proc else [])
        if killed:
            print(f"cleanup: killed {killed} process(es) left behind")
        if args.keep:
            print(f"kept: {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    print("PASS" if not failures else f"FAIL ({len(failures)} check(s) failed)")
    return 0 if not failures else 1


def report(args, proc, tmp, run_dir, pids_dir, out_json, tag, samples, wall, failures,
           expected_of, kind_of, index_of, interrupted, grace) -> None:
    import foldrunner

    n = args.folds
    rc = proc.returncode if proc else None
    orch = json.loads(out_json.read_text()) if out_json.exists() else {}
    print(f"\norchestrator exit {rc}, wall {wall:.1f}s ({n / wall:.1f} folds/s)")
    if interrupted:
        verdict(False, "the soak was interrupted", failures)
    if orch.get("error") or rc not in (0,):
        tail = (tmp / "orchestrator.log").read_text(errors="replace")[-1500:]
        verdict(False, f"foldrunner.run failed: {orch.get('error', f'exit {rc}')}\n{tail}", failures)

    # statuses
    try:
        df = foldrunner.load_results(run_dir)
    except Exception as e:  # noqa: BLE001
        df = None
        verdict(False, f"no results table: {type(e).__name__}: {e}", failures)
    if df is not None:
        counts = Counter(df["status"])
        print(f"folds per status: {dict(sorted(counts.items()))} ({len(df)} rows)")
        by_kind = Counter(kind_of(i) for i in range(n))
        print(f"faults injected: {dict(sorted(by_kind.items()))}")
        mismatches = []
        seen = set()
        for r in df.itertuples():
            block = getattr(r, "param_block", 0)
            i = index_of({"block": block, "block_size": 100 if n > 1000 else 0}, int(r.fold))
            kind = kind_of(i)
            seen.add(i)
            want = expected_of[kind]
            lingered = bool(getattr(r, "lingered", False))
            problems = []
            if r.status != want:
                problems.append(f"status {r.status} (want {want})")
            if int(r.attempts) != 1:
                problems.append(f"{r.attempts} attempts (want 1)")
            if kind == "linger" and r.status == "ok" and not lingered:
                problems.append("not marked lingered")
            if problems:
                err = str(r.error)[:70] if isinstance(r.error, str) and r.error else ""
                mismatches.append(f"{r.fold_id} [{kind}]: {', '.join(problems)} {err}".rstrip())
        missing = sorted(set(range(n)) - seen)
        for i in missing[:5]:
            mismatches.append(f"fold {i} [{kind_of(i)}]: no row")
        want_counts = Counter(expected_of[kind_of(i)] for i in range(n))
        print(f"expected per status: {dict(sorted(want_counts.items()))}")
        for m in mismatches[:15]:
            print(f"      {m}")
        if len(mismatches) > 15:
            print(f"      ... and {len(mismatches) - 15} more")
        verdict(not mismatches and not missing,
                f"statuses: {len(mismatches)} mismatch(es) of {n} folds ({len(missing)} without a row)", failures)

    # grandchildren that outlived their fold while the run went
    late = {}
    for s in samples:
        for rec in s["late"]:
            late.setdefault((rec["fold_id"], rec["pid"]), rec)
    kinds = Counter(r["kind"] for r in late.values())
    verdict(not late, f"grandchildren alive > grace+3s after their fold ended (during the run): "
                      f"{len(late)} {dict(kinds) if kinds else ''}".rstrip(), failures)

    # left behind at the end
    records = read_records(pids_dir)
    run_ids = run_ids_of(run_dir)
    deadline = time.monotonic() + grace + 3.0
    while True:
        alive_recs = [r for r in records if record_alive(r)]
        ours, foreign = marked_of_run(tag, run_ids)
        session = session_members(proc.pid) if proc else []
        if not (alive_recs or ours or session) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(f"grandchildren recorded: {len(records)} {dict(Counter(r['kind'] for r in records))}")
    kinds = Counter(r["kind"] for r in alive_recs)
    verdict(not alive_recs, f"recorded grandchildren still alive at the end: {len(alive_recs)} "
                            f"{dict(kinds) if kinds else ''}".rstrip(), failures)
    for r in alive_recs[:5]:
        print(f"      {r['fold_id']} [{r['kind']}] {describe(r['pid'])}")
    verdict(not ours, f"processes with this run's FOLDRUNNER_FOLD marker alive at the end: {len(ours)}"
                      + (f" {[describe(p) for p in ours[:5]]}" if ours else ""), failures)
    if foreign:
        print(f"      (ignored: {len(foreign)} marked process(es) of other runs on this machine)")
    verdict(not session, f"processes left in the orchestrator's session: {len(session)}"
                         + (f" {[describe(p) for p in session[:5]]}" if session else ""), failures)

    # the orchestrator's own view once run() returned
    if orch.get("end+1s"):
        end, end1 = orch["end"], orch["end+1s"]
        z = end1["zombies"]
        verdict(not z, f"zombie children of the orchestrator after run() returned: {len(end['zombies'])} "
                       f"(1 s later: {len(z)})" + (f" {z[:5]}" if z else ""), failures)
        kids = end["children"]
        print(f"      orchestrator after run(): rss {end['rss_mib']:.1f} MiB, fds {end['fds']}, "
              f"threads {end['threads']}, {len(kids)} live children {kids[:3]}"
              f"{f' ... and {len(kids) - 3} more' if len(kids) > 3 else ''}")
    if samples:
        print(f"zombie children during the run: max {max(s['zombies'] for s in samples)} in one sample")

    # RSS growth over the second half
    half = [s for s in samples if n / 2 <= s["done"] <= n]
    if len(half) >= 2:
        growth = half[-1]["rss"] - half[0]["rss"]
        spread = max(s["rss"] for s in half) - min(s["rss"] for s in half)
        first_all = samples[0]
        print(f"orchestrator over the second half ({half[0]['done']} -> {half[-1]['done']} folds, "
              f"{len(half)} samples): rss {half[0]['rss']:.1f} -> {half[-1]['rss']:.1f} MiB "
              f"(max-min {spread:.1f}), fds {half[0]['fds']} -> {half[-1]['fds']}, "
              f"threads {half[0]['threads']} -> {half[-1]['threads']}; whole run: rss "
              f"{first_all['rss']:.1f} -> {samples[-1]['rss']:.1f} MiB")
        verdict(growth < args.rss_goal,
                f"orchestrator RSS growth over the second half: {growth:+.2f} MiB (goal < {args.rss_goal:g} MiB"
                f"{'' if n >= 2000 else f'; set for 2,000 folds, this run had {n}'})", failures)
    else:
        print(f"SKIP  orchestrator RSS growth: {len(half)} sample(s) in the second half "
              f"(too few; more --folds or a shorter --interval)")


if __name__ == "__main__":
    sys.exit(main())
