"""``foldrunner status`` and ``foldrunner logs``: a run directory read from outside.

Everything here reads, nothing writes: the journal is opened read-only (a WAL reader
never blocks the orchestrator that writes it), so it works while the run is live, from
another terminal. Whether the run is live comes from the pid that the orchestrator
writes into ``RUN_DIR/run.lock`` while it holds the lock (see :mod:`foldrunner.orchestrate.lock`).
"""

from __future__ import annotations

import codecs
import difflib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from foldrunner.errors import FoldrunnerError, UsageError
from foldrunner.store.journal import Journal
from foldrunner.wire.outcome import Status
from foldrunner.store.paths import RunPaths

LOG_POLL_INTERVAL = 0.2
"""Seconds :func:`follow` waits, at the end of a log, before it reads again."""
LOG_CHUNK = 64 * 1024
"""Bytes :func:`follow` reads at a time."""
LOCK_CLOCK_SLACK = 2.0
"""A process created more than this many seconds after ``run.lock`` was last written is not
the one that wrote it: its pid was reused after the orchestrator died."""
REPORT_ITEMS = 8
"""Values of a report that ``status`` shows (the first ones, in the order reported)."""

#: the order in which ``status`` lists its counts
COUNT_ORDER = ("ok", "running", "retrying", "error", "timeout", "crashed", "memory",
               "cancelled", "interrupted", "pending")

PathLike = str | os.PathLike[str]


# -- small formatters (shared with the live view) ------------------------------------
def clock(seconds: float) -> str:
    """``7 -> "0:07"``, ``182 -> "3:02"``, ``3902 -> "1:05:02"``."""
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_report(report: Mapping[str, Any], limit: int = REPORT_ITEMS) -> str:
    """``epoch=3 loss=0.1234``: floats to 4 significant digits, the first ``limit`` items."""
    parts = []
    for k, v in list(report.items())[:limit]:
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    if len(report) > limit:
        parts.append(f"(+{len(report) - limit} more)")
    return " ".join(parts)


# -- is the run live? ----------------------------------------------------------------
@dataclass(frozen=True)
class Liveness:
    """Whether an orchestrator holds the run directory, and why we think so."""

    live: bool
    pid: int | None
    why: str


def run_liveness(run_dir: PathLike) -> Liveness:
    """Read ``run.lock``: live when the pid in it is a running process that was already
    running when the file was written (so not a reused pid)."""
    lock = RunPaths(Path(run_dir)).lock
    try:
        text = lock.read_text(errors="replace").strip()
        written = lock.stat().st_mtime
    except FileNotFoundError:
        return Liveness(False, None, "no run.lock: no run has held this directory")
    except OSError as exc:
        return Liveness(False, None, f"cannot read {lock}: {exc.strerror or exc}")
    if not text:
        return Liveness(False, None, "run.lock is empty: the last run has ended")
    if not text.isdigit():
        return Liveness(False, None, f"run.lock holds {text[:20]!r}, not a pid")
    pid = int(text)
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return Liveness(False, pid, f"orchestrator pid {pid} has ended")
        created = proc.create_time()
    except psutil.NoSuchProcess:
        return Liveness(False, pid, f"orchestrator pid {pid} has ended")
    except psutil.AccessDenied:  # it exists; another user's process
        return Liveness(True, pid, f"orchestrator pid {pid} is running")
    if created > written + LOCK_CLOCK_SLACK:
        return Liveness(
            False, pid, f"orchestrator pid {pid} has ended (that pid is now another process)"
        )
    return Liveness(True, pid, f"orchestrator pid {pid} is running")


# -- the state of a run --------------------------------------------------------------
@dataclass(frozen=True)
class RunningAttempt:
    """An attempt the journal shows as running."""

    fold_id: str
    attempt: int
    started_at: float
    gpu: int | None
    pid: int | None
    log_path: str
    report: dict[str, Any] = field(default_factory=dict)
    report_at: float | None = None


@dataclass(frozen=True)
class RunState:
    """What ``foldrunner status`` shows: one consistent read of the journal."""

    root: Path
    name: str
    total: int
    counts: dict[str, int]
    liveness: Liveness
    running: list[RunningAttempt]
    read_at: float


@contextmanager
def _reading(paths: RunPaths) -> Iterator[Journal]:
    """The journal, read-only, inside one read transaction (a consistent snapshot)."""
    paths.require_journal()
    try:
        journal = Journal(paths.journal, readonly=True)
    except sqlite3.Error as exc:
        raise FoldrunnerError(f"cannot open the journal {paths.journal}: {exc}") from None
    try:
        journal.db.execute("BEGIN")
        yield journal
    except sqlite3.Error as exc:
        raise FoldrunnerError(f"cannot read the journal {paths.journal}: {exc}") from None
    finally:
        journal.close()


def _retry_policy(paths: RunPaths) -> tuple[int, frozenset[str]] | None:
    """``(attempts, statuses retried)`` from the run's resolved spec, or None if unreadable."""
    from foldrunner.config.spec import load_spec

    try:
        spec = load_spec(paths.spec)
    except (FoldrunnerError, OSError):
        return None
    return spec.retry.attempts, frozenset(spec.retry.on)


def read_state(run_dir: PathLike) -> RunState:
    """Counts by status of each fold (its latest attempt), the running attempts, liveness.

    A fold with no attempt is ``pending``. While the run is live, a fold whose latest
    attempt failed in a way ``retry.on`` names, with attempts left, is ``retrying``; an
    attempt left ``running`` by an orchestrator that is gone is ``interrupted``.
    """
    paths = RunPaths(Path(run_dir))
    liveness = run_liveness(paths.root)
    with _reading(paths) as journal:
        meta = journal.meta()
        folds = journal.folds()
        attempts = journal.attempts()
    read_at = time.time()
    policy = _retry_policy(paths) if liveness.live else None
    latest: dict[str, sqlite3.Row] = {}
    for row in attempts:  # ordered by fold_id, attempt: the last one wins
        latest[row["fold_id"]] = row
    counts: dict[str, int] = {}
    for f in folds:
        last = latest.get(f["fold_id"])
        if last is None:
            key = "pending"
        elif last["status"] == Status.RUNNING.value:
            key = "running" if liveness.live else "interrupted"
        elif policy is not None and last["status"] in policy[1] and last["attempt"] < policy[0]:
            key = "retrying"
        else:
            key = last["status"]
        counts[key] = counts.get(key, 0) + 1
    running = [
        RunningAttempt(
            fold_id=a["fold_id"], attempt=a["attempt"], started_at=a["started_at"],
            gpu=a["gpu"], pid=a["pid"], log_path=a["log_path"],
            report=_report(a["report"]), report_at=a["report_at"],
        )
        for a in attempts
        if a["status"] == Status.RUNNING.value
    ]
    return RunState(
        root=paths.root, name=meta.get("name", ""), total=len(folds), counts=counts,
        liveness=liveness, running=running, read_at=read_at,
    )


def _report(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"report": text}
    return value if isinstance(value, dict) else {"report": value}


def render_state(state: RunState) -> str:
    """The text of ``foldrunner status``."""
    lv = state.liveness
    lines = [
        f"run {state.name or '?'} in {state.root}",
        f"state: {'live' if lv.live else 'not live'} ({lv.why})",
    ]
    ordered = sorted(state.counts.items(), key=lambda kv: (
        COUNT_ORDER.index(kv[0]) if kv[0] in COUNT_ORDER else len(COUNT_ORDER), kv[0]))
    listed = ", ".join(f"{n} {key}" for key, n in ordered if n)
    lines.append(f"folds: {state.total} in all" + (f": {listed}" if listed else ""))
    if not state.running:
        if lv.live:
            lines.append("running: none")
        return "\n".join(lines)
    if lv.live:
        lines.append("running:")
    else:
        lines.append("left running by an orchestrator that is gone (--resume ends and reruns them):")
    rows = [["fold", "attempt", "gpu", "pid", "elapsed", "report"]]
    for r in sorted(state.running, key=lambda r: r.started_at):
        report = format_report(r.report) or "-"
        if r.report_at is not None and r.report:
            report += f" ({clock(state.read_at - r.report_at)} ago)"
        rows.append([
            r.fold_id, str(r.attempt), "-" if r.gpu is None else str(r.gpu),
            "-" if r.pid is None else str(r.pid), clock(state.read_at - r.started_at), report,
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.rjust(w) if 0 < i < 5 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  " + "  ".join(cells + [row[-1]]))
    return "\n".join(lines)


def run_status(run_dir: PathLike) -> str:
    """``foldrunner status RUN_DIR``: counts by status, liveness, the running folds."""
    return render_state(read_state(run_dir))


# -- logs ----------------------------------------------------------------------------
def _listing(names: list[str], limit: int = 12) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[: limit - 3]) + ", ..., " + ", ".join(names[-2:]) + f" ({len(names)} in all)"


def resolve_log(run_dir: PathLike, fold_id: str, attempt: int | None = None) -> tuple[int, Path]:
    """``(attempt, path)`` of the log of one attempt of a fold (default: its latest).

    Raises :class:`UsageError`, listing the valid ones, for an unknown fold or attempt,
    and for a fold that has not started. The path may not exist yet (an attempt that has
    just started).
    """
    paths = RunPaths(Path(run_dir))
    with _reading(paths) as journal:
        fold_ids = [r["fold_id"] for r in journal.folds()]
        rows = list(journal.db.execute(
            "SELECT attempt, log_path FROM attempts WHERE fold_id = ? ORDER BY attempt", (fold_id,)
        ))
    if fold_id not in fold_ids:
        close = difflib.get_close_matches(fold_id, fold_ids, n=1) if len(fold_ids) > 12 else []
        hint = f"; did you mean {close[0]}?" if close else ""
        what = f"its folds are {_listing(fold_ids)}" if fold_ids else "it has no folds"
        raise UsageError(f"no fold {fold_id!r} in {paths.root}: {what}{hint}")
    if not rows:
        raise UsageError(f"fold {fold_id} has not started yet: it has no attempt and no log")
    numbers = [int(r["attempt"]) for r in rows]
    if attempt is None:
        attempt = numbers[-1]
    elif attempt not in numbers:
        raise UsageError(
            f"fold {fold_id} has no attempt {attempt}: its attempts are "
            f"{', '.join(map(str, numbers))}"
        )
    path = paths.log(fold_id, attempt)
    stored = Path(rows[numbers.index(attempt)]["log_path"] or "")
    if not path.exists() and stored.is_absolute() and stored.exists():
        path = stored  # a run dir whose logs were written elsewhere (an older layout)
    return attempt, path


def fold_log(run_dir: PathLike, fold_id: str, attempt: int | None = None) -> Path:
    """The log (captured stdout and stderr) of one attempt of a fold: the latest by default."""
    return resolve_log(run_dir, fold_id, attempt)[1]


@contextmanager
def attempt_watch(run_dir: PathLike, fold_id: str, attempt: int) -> Iterator[Callable[[], bool]]:
    """A predicate for :func:`follow`: true once the attempt is no longer running in the
    journal, or its run is no longer live (an attempt an orchestrator left behind)."""
    paths = RunPaths(Path(run_dir))
    paths.require_journal()
    journal = Journal(paths.journal, readonly=True)

    def ended() -> bool:
        try:
            row = journal.db.execute(
                "SELECT status FROM attempts WHERE fold_id = ? AND attempt = ?", (fold_id, attempt)
            ).fetchone()
        except sqlite3.Error:
            return True
        if row is None or row["status"] != Status.RUNNING.value:
            return True
        return not run_liveness(paths.root).live

    try:
        yield ended
    finally:
        journal.close()


def follow(path: Path, stop: Callable[[], bool], *, poll: float = LOG_POLL_INTERVAL) -> Iterator[str]:
    """Yield the text of ``path`` from its start and as it grows (``tail -f``), until
    ``stop()`` is true and everything written before that has been read.

    Waits for a file that does not exist yet; starts again from the top of a file that was
    truncated. Bytes that are not UTF-8 come out as U+FFFD.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    f = None
    pos = 0
    try:
        while True:
            done = stop()  # asked before the read: what was written before it is drained
            if f is None:
                try:
                    f = open(path, "rb")  # noqa: SIM115 - closed in finally
                except FileNotFoundError:
                    if done:
                        return
                    time.sleep(poll)
                    continue
            if os.fstat(f.fileno()).st_size < pos:
                f.seek(0)
                pos = 0
                decoder.reset()
            while chunk := f.read(LOG_CHUNK):
                pos += len(chunk)
                text = decoder.decode(chunk)
                if text:
                    yield text
            if done:
                rest = decoder.decode(b"", final=True)
                if rest:
                    yield rest
                return
            time.sleep(poll)
    finally:
        if f is not None:
            f.close()
