#!/usr/bin/env python3
"""Chaos test of resume: kill -9 the orchestrator at random moments, resume, check the journal.

    python scripts/chaos.py                     # 20 rounds (a few minutes)
    python scripts/chaos.py --rounds 3 --seed 1

Each round is a fresh run of ``--folds`` (60) short folds (``scripts/_faults.py:chaos``:
each sleeps 0.05-0.3 s; every 4th starts a ``setsid`` grandchild, sleep 600, recorded
under a pids directory) through the real command line,
``python -m foldrunner run SPEC --run-dir DIR [--resume]``, in a session of its own. At a
random moment (seeded by ``--seed``) the orchestrator process alone gets SIGKILL (not
its group: the folds must end on their own); then ``--resume``, killed again at a random
moment, and so on until a resume ends with exit 0 (after ``--max-kills`` kills a resume
runs undisturbed).

Measured, with the goals (PASS/FAIL lines; exit 1 on any FAIL):
  - after each kill, no process of the run (carrying its FOLDRUNNER_FOLD marker, or in
    the dead orchestrator's session: fork server, spares) is alive grace + 5 s later;
  - 0 results lost: every fold has an `ok` attempt at the end, and every `ok` journaled
    before a kill is still there, unchanged;
  - 0 duplicated: no (fold_id, attempt) twice, at most one `ok` per fold, one row per fold
    in results.csv, all `ok`;
  - no fold ran again once its `ok` was journaled (no attempt of it started after);
  - every invocation exits 0 or was killed by us (no 75 from a dead run's lock, no 1);
  - 0 processes left at the end of each round (marker scan + recorded grandchild pids).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from soak import (  # noqa: E402 - the shared helpers of the two scripts
    TAG_ENV, describe, journal_query, kill_everything, marked_of_run, raise_on_term,
    read_records, record_alive, run_ids_of, session_members, stop_session,
)

GRACE = 1.0

SPEC = """\
name: chaos
entrypoint: _faults:chaos
workdir: {workdir}
params: {{pids_dir: "{pids_dir}", grandchild_every: {every}, clean_env: {clean_env}}}
cv: {{folds: {folds}}}
resources: {{gpus: none, workers: {workers}, spares: {spares}}}
limits: {{timeout: 30s, grace: {grace:g}s, exit_timeout: 5s}}
retry: {{attempts: 1}}
env: {{{tag_env}: "{tag}"}}
"""


class Round:
    def __init__(self, index: int, tmp: Path, args, tag: str, rng: random.Random) -> None:
        self.index, self.args, self.tag, self.rng = index, args, tag, rng
        self.dir = tmp / f"round{index:02d}"
        self.run_dir, self.pids_dir = self.dir / "run", self.dir / "pids"
        self.pids_dir.mkdir(parents=True)
        self.spec = self.dir / "spec.yaml"
        self.spec.write_text(SPEC.format(
            workdir=HERE, pids_dir=self.pids_dir, every=args.grandchild_every,
            clean_env="true" if args.clean_env else "false", folds=args.folds, workers=args.workers,
            spares="true" if args.spares else "false", grace=GRACE, tag_env=TAG_ENV, tag=tag))
        self.sessions: list[int] = []
        self.failures: list[str] = []
        self.kills = 0
        self.invocations = 0
        self.kill_moments: list[float] = []
        self.death_s: list[float] = []       # seconds until every fold process was gone, per kill
        self.survivors = 0                   # fold processes alive grace+5 s after a kill
        self.leftovers_of_ended = 0          # left by folds already ended at the kill
        self.roots_at_kill: set[tuple[str, int]] = set()
        self.unmarked_after_kill = 0         # recorded unmarked grandchildren alive then (--clean-env)
        self.ok_snapshots: dict[tuple, tuple] = {}
        self.exits: Counter = Counter()

    def fail(self, text: str) -> None:
        self.failures.append(text)
        print(f"    FAIL  {text}", flush=True)

    def start(self, resume: bool) -> subprocess.Popen:
        n = self.invocations
        self.invocations += 1
        cmd = [sys.executable, "-m", "foldrunner", "run", str(self.spec), "--run-dir", str(self.run_dir)]
        if resume:
            cmd.append("--resume")
        env = dict(os.environ)  # the foldrunner next to this script, whatever is installed
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
        with open(self.dir / f"out.{n}.log", "wb") as out, open(self.dir / f"err.{n}.log", "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, cwd=self.dir, env=env)
        self.sessions.append(proc.pid)
        return proc

    def err_tail(self) -> str:
        """The last line of the latest invocation's stderr (an exception's, usually)."""
        logs = sorted(self.dir.glob("err.*.log"), key=lambda p: int(p.name.split(".")[1]))
        lines = [ln for ln in logs[-1].read_text(errors="replace").splitlines() if ln.strip()] if logs else []
        return lines[-1].strip()[:200] if lines else "(no stderr)"

    def run(self) -> None:
        resume = False
        max_invocations = self.args.max_kills + 5
        while True:
            if self.invocations >= max_invocations:
                self.fail(f"the run did not complete in {max_invocations} invocations")
                return
            proc = self.start(resume)
            resume = True
            if self.kills < self.args.max_kills:
                moment = self.rng.uniform(0.05, self.args.kill_window)
                t0 = time.monotonic()
                while proc.poll() is None and time.monotonic() - t0 < moment:
                    time.sleep(0.01)
                if proc.poll() is None:
                    self.kill(proc, moment)
                    continue
            try:
                rc = proc.wait(self.args.run_timeout)
            except subprocess.TimeoutExpired:
                stop_session(proc, GRACE)
                self.fail(f"an invocation ran past {self.args.run_timeout:.0f}s")
                return
            self.exits[rc] += 1
            if rc == 0:
                return
            self.fail(f"invocation {self.invocations} exited {rc}: {self.err_tail()}")
            if rc == 75:
                time.sleep(0.5)

    def kill(self, proc: subprocess.Popen, moment: float) -> None:
        os.kill(proc.pid, signal.SIGKILL)  # the orchestrator only, never its group
        proc.wait()
        t_kill = time.monotonic()
        self.roots_at_kill = self.live_roots()
        self.kills += 1
        self.exits["SIGKILL"] += 1
        self.kill_moments.append(moment)
        for r in journal_query(self.run_dir, "SELECT fold_id, attempt, status, started_at, ended_at "
                               "FROM attempts WHERE status = 'ok'") or []:
            self.ok_snapshots.setdefault((r[0], r[1]), r)
        run_ids = run_ids_of(self.run_dir)
        while True:
            ours, _ = marked_of_run(self.tag, run_ids)
            session = session_members(proc.pid)
            if not ours and not session:
                self.death_s.append(time.monotonic() - t_kill)
                break
            if time.monotonic() - t_kill > GRACE + 5:
                left = sorted(set(ours) | set(session))
                # a process left by a fold whose attempt had already ended when the
                # orchestrator died has no fold watching it: the contract has the next
                # --resume end it (checked at the end of the round), not the fold
                ended = self.of_ended_attempts(left)
                self.leftovers_of_ended += len(ended)
                left = [p for p in left if p not in ended]
                if not left:
                    self.death_s.append(time.monotonic() - t_kill)
                    break
                self.survivors += len(left)
                self.death_s.append(float("inf"))
                roots = {r[0] for r in journal_query(self.run_dir, "SELECT pid FROM attempts") or []}
                kinds = Counter("fold" if p in roots else "session" if p in session else "descendant"
                                for p in left)
                self.fail(f"kill {self.kills} (at {moment:.2f}s): {len(left)} process(es) alive "
                          f"{GRACE + 5:g}s after it {dict(kinds)}: {[describe(p) for p in left[:4]]}")
                break
            time.sleep(0.05)
        unmarked = [r for r in read_records(self.pids_dir) if r["kind"] == "clean_env" and record_alive(r)]
        self.unmarked_after_kill += len(unmarked)

    def live_roots(self) -> set[tuple[str, int]]:
        """The attempts whose fold process (the journal's pid) is alive right now."""
        from foldrunner.procs import proctree

        rows = journal_query(self.run_dir, "SELECT fold_id, attempt, pid FROM attempts "
                             "WHERE status = 'running'") or []
        return {(r[0], r[1]) for r in rows if r[2] and proctree.pid_alive(r[2])}

    def of_ended_attempts(self, pids: list[int]) -> set[int]:
        """The pids whose marker names an attempt whose fold process had already ended
        when the orchestrator was killed (journaled as ended, or its process gone)."""
        from foldrunner.procs import proctree

        out = set()
        for pid in pids:
            parts = (proctree.read_marker(pid) or "").split("/")
            if len(parts) == 3 and parts[2].isdigit():
                if (parts[1], int(parts[2])) not in self.roots_at_kill:
                    out.add(pid)
        return out

    def check(self) -> None:
        """The journal, results.csv and leftovers of a finished round."""
        rows = journal_query(self.run_dir, "SELECT fold_id, attempt, status, started_at, ended_at "
                             "FROM attempts ORDER BY fold_id, attempt")
        folds = journal_query(self.run_dir, "SELECT fold_id FROM folds")
        if rows is None or folds is None:
            self.fail("no journal to check")
            return
        fold_ids = {f[0] for f in folds}
        if len(fold_ids) != self.args.folds:
            self.fail(f"the journal plans {len(fold_ids)} folds, not {self.args.folds}")
        keys = Counter((r[0], r[1]) for r in rows)
        dup = [k for k, c in keys.items() if c > 1]
        oks: dict[str, list[tuple]] = {}
        for r in rows:
            if r[2] == "ok":
                oks.setdefault(r[0], []).append(r)
        lost = sorted(fold_ids - set(oks))
        double = sorted(f for f, v in oks.items() if len(v) > 1)
        reran = []
        for f, v in oks.items():
            ok = v[0]
            later = [r for r in rows if r[0] == f and r != ok and (r[1] > ok[1] or r[3] > ok[3])]
            if later:
                reran.append(f"{f}: ok attempt {ok[1]}, then attempt(s) {[r[1] for r in later]}")
        final = {(r[0], r[1]): r for r in rows}
        changed = [k for k, r in self.ok_snapshots.items() if final.get(k) != r]
        self.counts = {"lost": len(lost) + len(changed), "dup": len(dup) + len(double), "reran": len(reran)}
        self.statuses = Counter(r[2] for r in rows)
        if lost:
            self.fail(f"{len(lost)} fold(s) without an ok: {lost[:5]}")
        if changed:
            self.fail(f"{len(changed)} ok attempt(s) journaled before a kill changed or vanished: {changed[:5]}")
        if dup:
            self.fail(f"(fold_id, attempt) recorded twice: {dup[:5]}")
        if double:
            self.fail(f"{len(double)} fold(s) with more than one ok: {double[:5]}")
        if reran:
            self.fail(f"{len(reran)} fold(s) ran again after their ok: {reran[:3]}")
        # results.csv
        try:
            with open(self.run_dir / "results.csv", newline="") as f:
                table = list(csv.DictReader(f))
        except OSError as e:
            self.fail(f"no results.csv: {e}")
            table = []
        ids = Counter(r.get("fold_id") for r in table)
        bad = Counter(r.get("status") for r in table if r.get("status") != "ok")
        if table and (len(table) != self.args.folds or set(ids) != fold_ids or max(ids.values()) > 1 or bad):
            self.counts["dup"] += sum(c - 1 for c in ids.values())
            self.fail(f"results.csv: {len(table)} rows, {len(ids)} distinct folds, not ok: {dict(bad)}")
        # leftovers
        run_ids = run_ids_of(self.run_dir)
        deadline = time.monotonic() + GRACE + 3
        while True:
            recs = [r for r in read_records(self.pids_dir) if record_alive(r)]
            ours, _ = marked_of_run(self.tag, run_ids)
            session = [p for sid in self.sessions for p in session_members(sid)]
            left = sorted({r["pid"] for r in recs} | set(ours) | set(session))
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.left = len(left)
        if left:
            self.fail(f"{len(left)} process(es) left at the end of the round: {[describe(p) for p in left[:4]]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20, help="fresh runs, each killed and resumed (default 20)")
    ap.add_argument("--folds", type=int, default=60, help="folds per run (default 60)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    ap.add_argument("--max-kills", type=int, default=6, help="kills per round at most (default 6)")
    ap.add_argument("--kill-window", type=float, default=3.0,
                    help="each kill comes uniformly in 0.05 .. this many seconds after the start (default 3)")
    ap.add_argument("--grandchild-every", type=int, default=4,
                    help="every n-th fold starts a setsid grandchild (0: none; default 4)")
    ap.add_argument("--clean-env", action="store_true",
                    help="those folds also start an env={} grandchild (no marker: beyond the contract)")
    ap.add_argument("--spares", action="store_true", help="resources.spares: true (default false)")
    ap.add_argument("--run-timeout", type=float, default=120, help="seconds one undisturbed invocation may take")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (run dirs, logs) and print it")
    args = ap.parse_args()

    raise_on_term()
    rng = random.Random(args.seed)
    tag = uuid.uuid4().hex[:12]
    tmp = Path(tempfile.mkdtemp(prefix="foldrunner-chaos-"))
    rounds: list[Round] = []
    interrupted = False
    t0 = time.monotonic()
    print(f"chaos: {args.rounds} rounds of {args.folds} folds, {args.workers} workers, seed {args.seed}, "
          f"up to {args.max_kills} kill -9 per round in 0.05-{args.kill_window:g}s, tmp {tmp}")
    try:
        for i in range(args.rounds):
            r = Round(i, tmp, args, tag, rng)
            rounds.append(r)
            t = time.monotonic()
            try:
                r.run()
                r.check()
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - a broken round is reported, the rest go on
                import traceback

                traceback.print_exc()
                r.fail(f"the round itself failed: {type(e).__name__}: {e}")
            finally:
                kill_everything(tag, r.pids_dir, r.sessions)
            c = getattr(r, "counts", {})
            print(f"  round {i:2d}: {r.kills} kill(s) at {[round(m, 2) for m in r.kill_moments]}s, "
                  f"{r.invocations} invocation(s), attempts {dict(getattr(r, 'statuses', {}))}, "
                  f"lost {c.get('lost', '?')}, dup {c.get('dup', '?')}, reran {c.get('reran', '?')}, "
                  f"left {getattr(r, 'left', '?')}, {time.monotonic() - t:.1f}s "
                  f"{'ok' if not r.failures else 'FAIL'}", flush=True)
    except KeyboardInterrupt as e:
        interrupted = True
        print(f"\ninterrupted ({e or 'SIGINT'}): cleaning up")
    finally:
        killed = sum(kill_everything(tag, r.pids_dir, r.sessions) for r in rounds)
        if killed:
            print(f"cleanup: killed {killed} process(es)")
        if args.keep:
            print(f"kept: {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)

    done = [r for r in rounds if hasattr(r, "counts")]
    kills = sum(r.kills for r in rounds)
    deaths = [d for r in rounds for d in r.death_s if d != float("inf")]
    exits = sum((r.exits for r in rounds), Counter())
    failures: list[str] = []

    def verdict(ok: bool, text: str) -> None:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
        if not ok:
            failures.append(text)

    print(f"\n{len(rounds)} round(s) in {time.monotonic() - t0:.0f}s: {kills} kill -9, "
          f"{sum(r.invocations for r in rounds)} invocations, exits {dict(exits)}")
    if deaths:
        print(f"fold processes gone after a kill -9: median {sorted(deaths)[len(deaths) // 2]:.2f}s, "
              f"max {max(deaths):.2f}s (limit grace+5 = {GRACE + 5:g}s)")
    if args.clean_env:
        print(f"unmarked (env={{}}) grandchildren alive grace+5 s after a kill: "
              f"{sum(r.unmarked_after_kill for r in rounds)}")
    verdict(not interrupted and len(rounds) == args.rounds, f"rounds run: {len(rounds)} of {args.rounds}")
    verdict(all(not any("did not complete" in f or "ran past" in f for f in r.failures) for r in rounds),
            f"runs completed with exit 0: {sum(1 for r in rounds if r.exits.get(0))} of {len(rounds)}")
    bad_exits = {k: v for k, v in exits.items() if k not in (0, "SIGKILL")}
    verdict(not bad_exits, f"invocations exiting other than 0 or by our kill: {sum(bad_exits.values())} {bad_exits or ''}")
    verdict(all(r.survivors == 0 for r in rounds),
            f"fold processes alive grace+5 s after a kill -9: {sum(r.survivors for r in rounds)} "
            f"(in {sum(1 for r in rounds if r.survivors)} round(s))")
    print(f"left by folds that had already ended when the orchestrator was killed, "
          f"ended by the next --resume: {sum(r.leftovers_of_ended for r in rounds)}")
    checked = "" if len(done) == len(rounds) else f" ({len(done)} of {len(rounds)} round(s) checked)"
    verdict(all(r.counts["lost"] == 0 for r in done),
            f"results lost: {sum(r.counts['lost'] for r in done)}{checked}")
    verdict(all(r.counts["dup"] == 0 for r in done),
            f"results duplicated: {sum(r.counts['dup'] for r in done)}{checked}")
    verdict(all(r.counts["reran"] == 0 for r in done),
            f"folds run again after their ok was journaled: {sum(r.counts['reran'] for r in done)}{checked}")
    verdict(all(r.left == 0 for r in done),
            f"processes left at the end of a round: {sum(getattr(r, 'left', 0) for r in done)}{checked}")
    other = sum(len(r.failures) for r in rounds)
    print("PASS" if not failures else f"FAIL ({len(failures)} check(s) failed; {other} failure(s) in rounds)")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
