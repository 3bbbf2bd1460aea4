"""The SQLite journal of a run: the spec, the plan, and every attempt as it ends.

The results table is derived from the journal, never the other way round.

Durability: the journal runs in WAL mode with ``synchronous=NORMAL``. In WAL mode a
committed transaction is in the WAL file once ``commit()`` returns, so it survives any
crash of the orchestrator process (``kill -9``, an OOM kill, a Python crash); only a
power loss or kernel crash may lose the last transactions, which would make those folds
run again on resume, never corrupt the journal. ``FULL`` would add an fsync per attempt
for that case only.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from foldrunner.errors import STORAGE_ERRNOS, StorageError, storage_error
from foldrunner.wire.outcome import AttemptResult, Status
from foldrunner.store.paths import NOFOLLOW, private_journal
from foldrunner.config.plan import Fold, Plan

SCHEMA_VERSION = 1
CACHE_KIB = 256
"""SQLite page cache of the orchestrator's connection (KiB): the journal is written
much more than read, and a long run's cache would otherwise grow with it to 2 MiB."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS folds (
    fold_id TEXT PRIMARY KEY, idx INTEGER NOT NULL, trial INTEGER NOT NULL,
    replicate INTEGER NOT NULL, fold INTEGER NOT NULL, seed INTEGER NOT NULL,
    params TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    fold_id TEXT NOT NULL, attempt INTEGER NOT NULL, status TEXT NOT NULL,
    started_at REAL NOT NULL, ended_at REAL, duration_s REAL,
    gpu INTEGER, pid INTEGER, pid_started_at REAL,
    exit_code INTEGER, signal TEXT, error TEXT NOT NULL DEFAULT '',
    traceback TEXT NOT NULL DEFAULT '', metrics TEXT NOT NULL DEFAULT '{}',
    peak_rss_mb REAL, peak_gpu_mb REAL, lingered INTEGER NOT NULL DEFAULT 0,
    note TEXT NOT NULL DEFAULT '', log_path TEXT NOT NULL DEFAULT '',
    report TEXT, report_at REAL, host TEXT NOT NULL DEFAULT '', node TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (fold_id, attempt)
);
"""

_REPORTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    fold_id TEXT NOT NULL, attempt INTEGER NOT NULL, seq INTEGER NOT NULL,
    time_s REAL NOT NULL, metrics TEXT NOT NULL,
    PRIMARY KEY (fold_id, attempt, seq)
) WITHOUT ROWID;
"""
"""The report history: the ``ctx.report`` calls of every attempt that the recorder keeps
(:mod:`foldrunner.store.recorder` says which), ``seq`` the call's 0-based index within the
attempt, ``time_s`` seconds since the attempt started. Created when a journal is opened for
writing, so a journal written before it existed gets it (empty) when it is resumed."""
ReportRow = tuple[str, int, int, float, Mapping[str, Any]]
"""``(fold_id, attempt, seq, time_s, metrics)``: one row of ``reports``."""

_SEARCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS search_trials (
    trial INTEGER PRIMARY KEY, state TEXT NOT NULL, params TEXT NOT NULL,
    value REAL, updated_at REAL NOT NULL, note TEXT NOT NULL DEFAULT ''
);
"""
"""An adaptive search's trials (``search.optuna``): the journal's account, which the
Optuna study follows (:mod:`foldrunner.search.study`). A table that older journals get
when they are opened for writing."""


#: SQLite's primary result codes that mean the disk, not the SQL: full, read-only,
#: an I/O error, cannot open (a read-only or vanished directory)
_STORAGE_CODES = frozenset({13, 8, 10, 14})  # SQLITE_FULL, _READONLY, _IOERR, _CANTOPEN
_STORAGE_WORDS = ("disk is full", "readonly database", "disk i/o error", "unable to open")


def journal_storage_error(path: Path, exc: BaseException) -> StorageError | None:
    """The StorageError for ``exc`` raised writing the journal at ``path``; None when
    ``exc`` is not the disk's fault (a locked database, a bug)."""
    if isinstance(exc, OSError):
        return storage_error("the journal", path, exc) if exc.errno in STORAGE_ERRNOS else None
    if not isinstance(exc, sqlite3.Error):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        if code & 0xFF not in _STORAGE_CODES:
            return None
    elif not any(w in str(exc).lower() for w in _STORAGE_WORDS):
        return None
    reason = str(exc)
    if code is None or code & 0xFF != 13:  # not "full": say what the OS says of the dir
        why = _probe(path.parent)
        if why:
            reason += f" ({why})"
    return StorageError("the journal", path, reason)


def _probe(directory: Path) -> str | None:
    """Why a byte cannot be written in ``directory`` (the OS's words), or None."""
    probe = directory / f".foldrunner-probe.{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600)
    except OSError as exc:
        return exc.strerror
    try:
        os.write(fd, b"\0")
        os.fsync(fd)
    except OSError as exc:
        return exc.strerror
    finally:
        os.close(fd)
        try:
            os.unlink(probe)
        except OSError:
            pass
    return None


def _json(value: Any) -> str:
    return json.dumps(value, default=repr, allow_nan=True)


def _finite(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


class Journal:
    """One run directory's ``journal.sqlite``. Use as a context manager."""

    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            uri = f"file:{urllib.parse.quote(str(self.path.resolve()))}?mode=ro"
            self.db = sqlite3.connect(uri, uri=True, timeout=10, check_same_thread=False)
        else:
            private_journal(self.path)  # 0600, never through a symlink: it may hold secrets
            self.db = sqlite3.connect(self.path, timeout=10, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self.db.executescript(_SCHEMA)
            self.db.executescript(_SEARCH_SCHEMA)
            self._add_missing_columns()
            self.db.executescript(_REPORTS_SCHEMA)  # a journal written before it gets it too
        self.db.row_factory = sqlite3.Row

    def _add_missing_columns(self) -> None:
        """A journal written before a column existed gets it (empty) when it is resumed."""
        have = {row[1] for row in self.db.execute("PRAGMA table_info(attempts)")}
        for column in ("host", "node"):
            if column not in have:
                with self.db:
                    self.db.execute(f"ALTER TABLE attempts ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")

    # -- lifecycle ---------------------------------------------------------------
    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; a full disk or a read-only run dir is a StorageError."""
        try:
            with self.db:
                yield self.db
        except (sqlite3.Error, OSError) as exc:
            error = journal_storage_error(self.path, exc)
            if error is None:
                raise
            raise error from exc

    # -- meta and plan -----------------------------------------------------------
    def initialise(self, *, run_id: str, spec_yaml: str, plan: Plan, name: str) -> None:
        """Write the meta data and the plan of a new run."""
        meta = {
            "schema_version": str(SCHEMA_VERSION),
            "run_id": run_id,
            "name": name,
            "plan_hash": plan.hash,
            "spec": spec_yaml,
            "created_at": repr(time.time()),
        }
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
            db.executemany(
                "INSERT OR REPLACE INTO folds VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (f.fold_id, f.index, f.trial, f.replicate, f.fold, f.seed, _json(dict(f.params)))
                    for f in plan.folds
                ],
            )

    def meta(self) -> dict[str, str]:
        return {r["key"]: r["value"] for r in self.db.execute("SELECT key, value FROM meta")}

    # -- attempts ----------------------------------------------------------------
    def start_attempt(
        self,
        fold_id: str,
        attempt: int,
        *,
        started_at: float,
        pid: int | None,
        pid_started_at: float | None,
        gpu: int | None,
        log_path: str,
        host: str = "",
        node: str = "",
    ) -> None:
        """Record an attempt as running (so that status and resume can see it); ``host``
        is the machine it runs on, ``node`` its Ray node id (empty when local)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO attempts (fold_id, attempt, status, started_at, pid,"
                " pid_started_at, gpu, log_path, host, node) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (fold_id, attempt, Status.RUNNING.value, started_at, pid, pid_started_at, gpu,
                 log_path, host, node),
            )

    def end_attempt(self, r: AttemptResult) -> None:
        """Record how an attempt ended; one transaction, committed before returning."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO attempts (fold_id, attempt, status, started_at, ended_at, duration_s,"
                " gpu, pid, exit_code, signal, error, traceback, metrics, peak_rss_mb, peak_gpu_mb,"
                " lingered, note, log_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (fold_id, attempt) DO UPDATE SET status=excluded.status,"
                " started_at=excluded.started_at, ended_at=excluded.ended_at,"
                " duration_s=excluded.duration_s, gpu=excluded.gpu, pid=excluded.pid,"
                " exit_code=excluded.exit_code, signal=excluded.signal, error=excluded.error,"
                " traceback=excluded.traceback, metrics=excluded.metrics,"
                " peak_rss_mb=excluded.peak_rss_mb, peak_gpu_mb=excluded.peak_gpu_mb,"
                " lingered=excluded.lingered, note=excluded.note, log_path=excluded.log_path",
                (
                    r.fold_id, r.attempt, r.status.value, r.started_at, r.ended_at, r.duration_s,
                    r.gpu, r.pid, r.exit_code, r.signal, r.error, r.traceback, _json(r.metrics),
                    _finite(r.peak_rss_mb), _finite(r.peak_gpu_mb), int(r.lingered), r.note,
                    r.log_path,
                ),
            )

    def set_report(self, fold_id: str, attempt: int, report: Mapping[str, Any], at: float) -> None:
        """Store the latest ``ctx.report(...)`` of a running attempt."""
        with self._tx() as db:
            db.execute(
                "UPDATE attempts SET report = ?, report_at = ? WHERE fold_id = ? AND attempt = ?",
                (_json(dict(report)), at, fold_id, attempt),
            )

    def save_reports(self, history: Sequence[ReportRow],
                     latest: Mapping[tuple[str, int], tuple[Mapping[str, Any], float]]) -> None:
        """Append ``history`` to the report history and store the latest report of each
        attempt in ``latest`` (``(fold_id, attempt) -> (metrics, at)``): one transaction
        for any number of attempts and calls."""
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO reports VALUES (?, ?, ?, ?, ?)",
                           [(f, a, seq, t, _json(dict(m))) for f, a, seq, t, m in history])
            db.executemany(
                "UPDATE attempts SET report = ?, report_at = ? WHERE fold_id = ? AND attempt = ?",
                [(_json(dict(m)), at, f, a) for (f, a), (m, at) in latest.items()],
            )

    def attempts(self) -> list[sqlite3.Row]:
        return list(self.db.execute("SELECT * FROM attempts ORDER BY fold_id, attempt"))

    def folds(self) -> list[sqlite3.Row]:
        return list(self.db.execute("SELECT * FROM folds ORDER BY idx"))

    def attempt_counts(self) -> dict[str, int]:
        """Highest attempt number recorded per fold."""
        return {
            r[0]: r[1]
            for r in self.db.execute("SELECT fold_id, MAX(attempt) FROM attempts GROUP BY fold_id")
        }

    def ok_folds(self) -> set[str]:
        return {
            r[0]
            for r in self.db.execute("SELECT DISTINCT fold_id FROM attempts WHERE status = 'ok'")
        }

    def used_attempts(self) -> dict[str, int]:
        """Attempts per fold that count against ``retry.attempts`` (cancelled ones do not)."""
        return {
            r[0]: r[1]
            for r in self.db.execute(
                "SELECT fold_id, COUNT(*) FROM attempts WHERE status != 'cancelled' GROUP BY fold_id"
            )
        }

    def forget_attempt(self, fold_id: str, attempt: int) -> None:
        """Drop a 'running' attempt that never began (its warm spare died in the handover)."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM attempts WHERE fold_id = ? AND attempt = ? AND status = ?",
                (fold_id, attempt, Status.RUNNING.value),
            )

    # -- adaptive search (search.optuna) -------------------------------------------
    def add_trial(self, trial: int, params: Mapping[str, Any], folds: list[Fold]) -> None:
        """A trial asked of the study: its row (``running``) and its folds, one transaction."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO search_trials (trial, state, params, updated_at)"
                       " VALUES (?, 'running', ?, ?)", (trial, _json(dict(params)), time.time()))
            db.executemany(
                "INSERT OR IGNORE INTO folds VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(f.fold_id, f.index, f.trial, f.replicate, f.fold, f.seed, _json(dict(f.params)))
                 for f in folds])

    def end_trial(self, trial: int, state: str, value: float | None, note: str = "",
                  never_launched: Sequence[tuple[str, int]] = (),
                  relabel: Sequence[tuple[str, int]] = ()) -> None:
        """A trial's end (``complete``, ``pruned``, ``fail``), one transaction: its state and
        value; a ``pruned`` row (attempt number given, never launched) for each fold of
        ``never_launched``; the attempts of ``relabel`` (ended while it was pruned) become
        ``pruned``."""
        now = time.time()
        with self._tx() as db:
            db.execute("UPDATE search_trials SET state = ?, value = ?, note = ?, updated_at = ?"
                       " WHERE trial = ?", (state, value, note, now, trial))
            db.executemany(
                "INSERT OR IGNORE INTO attempts (fold_id, attempt, status, started_at, ended_at,"
                " duration_s, error) VALUES (?, ?, 'pruned', ?, ?, 0.0, ?)",
                [(fid, n, now, now, note) for fid, n in never_launched])
            db.executemany("UPDATE attempts SET status = 'pruned' WHERE fold_id = ? AND attempt = ?"
                           " AND status IN ('cancelled', 'running')", relabel)

    def search_trials(self) -> list[sqlite3.Row]:
        """The adaptive search's trials by number (none for another search or an older journal)."""
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'search_trials'").fetchone() is None:
            return []
        return list(self.db.execute("SELECT * FROM search_trials ORDER BY trial"))

    # -- whose run it is ---------------------------------------------------------
    def set_owner(self, owner: Mapping[str, Any]) -> None:
        """Record the orchestrator now running this journal (pid, start time, token,
        the run directory's identity): a later resume ends only this owner's orphans."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('owner', ?)", (_json(dict(owner)),))

    def owner(self) -> dict[str, Any]:
        """The last orchestrator recorded by :meth:`set_owner` (empty when none)."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'owner'").fetchone()
        return dict(json.loads(row[0])) if row else {}
