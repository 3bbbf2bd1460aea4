"""``foldrunner logs``: the captured output of one attempt of a fold, whole or followed.

The log's path comes from the journal, read-only (see :mod:`foldrunner.ui.status`);
:func:`follow` reads a log as it grows, like ``tail -f``, until the attempt has ended.
"""

from __future__ import annotations

import codecs
import difflib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from foldrunner.errors import UsageError
from foldrunner.store.journal import Journal
from foldrunner.store.paths import RunPaths
from foldrunner.ui.status import PathLike, reading, run_liveness
from foldrunner.wire.outcome import Status

LOG_POLL_INTERVAL = 0.2
"""Seconds :func:`follow` waits, at the end of a log, before it reads again."""
LOG_CHUNK = 64 * 1024
"""Bytes :func:`follow` reads at a time."""


def _listing(names: list[str], limit: int = 12) -> str:
    """``a, b, c``; past ``limit`` names, the first ones, ``...``, the last two and the count."""
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
    with reading(paths) as journal:
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
