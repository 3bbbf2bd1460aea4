"""What ``foldrunner run`` prints: a live view on a terminal, plain lines elsewhere.

:class:`PlainLines` prints one plain line per ended attempt, and a summary. Plain lines
carry no escape codes, so cron mail and log files stay readable. :class:`LiveView` draws
a progress bar, the counts by status and one line per running fold with ``rich``.
:func:`make_printer` picks one. A write to a closed stdout (a closed pipe, a gone
terminal) never ends the run: it switches the output off.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import pandas as pd
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from foldrunner.engine.events import AttemptStart, Events, TrialCounts
from foldrunner.wire.outcome import AttemptResult, Status
from foldrunner.config.plan import Fold
from foldrunner.ui.format import clock, dash, ended_line, format_report, summary_line

log = logging.getLogger("foldrunner")

REFRESH_PER_SECOND = 4.0
"""The live view is redrawn at most this often."""
CLOCK_REFRESH_INTERVAL = 1.0
"""With nothing new, the live view is still redrawn this often, so that clocks move."""
STOP_JOIN_TIMEOUT = 2.0
"""Seconds :meth:`LiveView.stop` waits for the redraw thread to end."""

#: the final statuses the live view counts, in the order it shows them
COUNTED = (Status.OK, Status.ERROR, Status.TIMEOUT, Status.CRASHED, Status.MEMORY, Status.CANCELLED,
           Status.PRUNED)
_STYLES = {
    Status.OK: "green", Status.ERROR: "red", Status.TIMEOUT: "yellow",
    Status.CRASHED: "red", Status.MEMORY: "magenta", Status.CANCELLED: "dim", Status.PRUNED: "blue",
}


class PlainLines(Events):
    """Prints one line per ended attempt to ``stream`` (default: stdout).

    A subscriber of the run's events like :class:`LiveView`; ``start`` and ``stop`` do
    nothing, so that the CLI drives both the same way.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.broken = False

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stdout

    def _print(self, text: str, err: bool = False) -> None:
        if self.broken:
            return
        try:
            stream = sys.stderr if err else self._out()
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):
            self.broken = True

    def start(self, total: int, already_ok: int = 0) -> PlainLines:
        return self

    def stop(self) -> None:
        pass

    def __enter__(self) -> PlainLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def note(self, text: str) -> None:
        self._print(f"foldrunner: {text}", err=True)

    def attempt_ended(self, fold: Fold, result: AttemptResult, final: bool) -> None:
        self._print(ended_line(fold, result, final))

    def table(self, text: str) -> None:
        self._print(text)

    def summary(self, df: pd.DataFrame) -> None:
        self._print(summary_line(df))


@dataclass
class _Flight:
    """A running attempt as the live view shows it."""

    fold: Fold
    attempt: int
    gpu: int | None
    started: float  # monotonic
    report: dict[str, Any] = field(default_factory=dict)


class LiveView(Events):
    """The live progress of a run on a terminal, drawn with ``rich``.

    A progress bar with the ETA, the counts by final status, and one line per running
    fold (id, attempt, GPU, elapsed time, latest report). Ended attempts that failed are
    printed above it as they come; notes, the table and the summary too. The view is
    redrawn by its own thread at most :data:`REFRESH_PER_SECOND` times a second (rich
    reads the terminal's size at each redraw, so a resize or a tmux pane change is
    followed); the last frame stays on the screen after :meth:`stop`.

    The callbacks never raise: a failed write (a closed stdout, a gone terminal)
    switches the output off and the run goes on. ``NO_COLOR`` is honoured by the
    default console. Use ``with LiveView().start(total) as view: ...`` or call
    :meth:`start` and :meth:`stop` yourself.
    """

    def __init__(self, console: Console | None = None, *,
                 refresh_per_second: float = REFRESH_PER_SECOND) -> None:
        self.console = console if console is not None else Console()
        # rich's default answer to a broken pipe is dup2(devnull, stdout) and SystemExit
        setattr(self.console, "on_broken_pipe", self._on_broken_pipe)
        self.refresh_per_second = refresh_per_second
        self.broken = False
        self.total = 0
        self.already_ok = 0
        self.counts: dict[Status, int] = dict.fromkeys(COUNTED, 0)
        self.retries = 0
        self._trials: TrialCounts | None = None
        self._skipped_before = 0
        """Folds of pruned trials never launched, before this run started (a resume)."""
        self._flights: dict[tuple[str, int], _Flight] = {}
        self._started_at: float | None = None
        self._lock = threading.Lock()  # the state above; never held while writing
        self._dirty = threading.Event()
        self._halt = threading.Event()
        self._live: Live | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------
    def start(self, total: int, already_ok: int = 0) -> LiveView:
        """Show the view for ``total`` folds, ``already_ok`` of them done (a resume)."""
        with self._lock:
            self.total, self.already_ok = total, already_ok
            self._started_at = time.monotonic()
        if self._live is not None or self.broken:
            return self
        self._live = Live(
            get_renderable=self._render, console=self.console, auto_refresh=False,
            transient=False, redirect_stdout=True, redirect_stderr=True,
        )
        self._guard(self._live.start, True)
        if not self.broken:
            self._halt.clear()
            self._thread = threading.Thread(target=self._redraw_loop, name="foldrunner-live", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Draw the final frame, leave it on the screen and give the terminal back."""
        self._halt.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(STOP_JOIN_TIMEOUT)
        self._thread = None
        if self._live is not None:
            self._guard(self._live.stop)
            self._disable(broken=self.broken)  # gives the terminal back even if that failed

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _redraw_loop(self) -> None:
        interval = 1.0 / self.refresh_per_second
        last = time.monotonic()
        while not self._halt.wait(interval):
            now = time.monotonic()
            if not self._dirty.is_set() and now - last < CLOCK_REFRESH_INTERVAL:
                continue
            self._dirty.clear()
            last = now
            live = self._live
            if live is None or self.broken:
                return
            self._guard(live.refresh)

    def _guard(self, fn: Any, *args: Any) -> None:
        """Call a rich function; on failure switch the output off (a display never ends a run)."""
        if self.broken:
            return
        try:
            fn(*args)
        except (OSError, ValueError):  # a closed stdout or a gone terminal
            self._disable()
        except Exception as exc:  # a bug in the view must not end a run
            log.warning("foldrunner: the live view is switched off after an error: %r", exc)
            self._disable()
        else:
            if self.broken:  # the console met a broken pipe
                self._disable()

    def _on_broken_pipe(self) -> None:
        self.console.quiet = True
        self.broken = True

    def _disable(self, broken: bool = True) -> None:
        """Stop drawing; give sys.stdout and sys.stderr back; with ``broken``, write no more."""
        self.broken = broken
        self._halt.set()
        if broken:
            self.console.quiet = True
        live, self._live = self._live, None
        if live is not None:
            try:
                live.stop()  # restores the redirected streams even when its last write fails
            except (OSError, ValueError):
                pass

    def _print(self, text: str, style: str = "", soft_wrap: bool = False) -> None:
        if not self.broken:
            self._guard(
                lambda: self.console.print(Text(text, style=style), soft_wrap=soft_wrap, highlight=False)
            )

    # -- events ----------------------------------------------------------------------
    def note(self, text: str) -> None:
        self._print(f"foldrunner: {text}", style="yellow")

    def run_started(self, total: int, already_ok: int) -> None:
        self.start(total, already_ok)

    def attempt_started(self, start: AttemptStart) -> None:
        with self._lock:
            self._flights[(start.fold.fold_id, start.attempt)] = _Flight(
                start.fold, start.attempt, start.slot.gpu, time.monotonic())
        self._dirty.set()

    def report(self, fold: Fold, attempt: int, metrics: dict[str, Any], at: float) -> None:
        """The latest ``ctx.report(...)`` of a running attempt."""
        with self._lock:
            flight = self._flights.get((fold.fold_id, attempt))
            if flight is not None:
                flight.report = dict(metrics)
        self._dirty.set()

    def trials(self, counts: TrialCounts) -> None:
        """An adaptive search's trials: complete, pruned, in flight."""
        with self._lock:
            if self._trials is None:
                self._skipped_before = counts.skipped_folds
            self._trials = counts
        self._dirty.set()

    def attempt_ended(self, fold: Fold, result: AttemptResult, final: bool) -> None:
        with self._lock:
            self._flights.pop((fold.fold_id, result.attempt), None)
            if not final:
                self.retries += 1
            elif result.status in self.counts:
                self.counts[result.status] += 1
        self._dirty.set()
        if result.status is not Status.OK:
            style = _STYLES.get(result.status, "red") if final else "yellow"
            self._print(ended_line(fold, result, final), style=style)

    def table(self, text: str) -> None:
        self._print(text, soft_wrap=True)

    def summary(self, df: pd.DataFrame) -> None:
        self._print(summary_line(df), style="bold", soft_wrap=True)

    # -- drawing ---------------------------------------------------------------------
    def _render(self) -> RenderableType:
        now = time.monotonic()
        with self._lock:
            counts = dict(self.counts)
            flights = sorted(self._flights.values(), key=lambda f: (f.fold.index, f.attempt))
            flights = [_Flight(f.fold, f.attempt, f.gpu, f.started, dict(f.report)) for f in flights]
            total, already, retries, t0 = self.total, self.already_ok, self.retries, self._started_at
            trials, skipped = self._trials, 0
            if trials is not None:
                skipped = trials.skipped_folds - self._skipped_before
        ended = sum(counts.values()) + skipped  # a pruned trial's unlaunched folds are done too
        done = ended + already
        elapsed = 0.0 if t0 is None else now - t0
        if total and done >= total:
            eta = "done"
        elif ended and total:
            eta = "ETA " + clock(elapsed / ended * (total - done))
        else:
            eta = "ETA -"
        bar = Table.grid(padding=(0, 1))
        for _ in range(4):
            bar.add_column(no_wrap=True)
        bar.add_row(
            ProgressBar(total=max(total, 1), completed=min(done, max(total, 1)), width=40),
            Text(f"{done}/{total} folds" if total else f"{done} folds"),
            Text(clock(elapsed), style="cyan"),
            Text(eta, style="cyan"),
        )
        line = Text()
        for status in COUNTED:
            n = counts[status] + (already if status is Status.OK else 0)
            if status is Status.PRUNED and trials is None and not n:
                continue  # pruning is an adaptive search's: other runs show no such count
            line.append(f"{status.value} {n}", style=_STYLES[status] if n else "dim")
            line.append("  ")
        line.append(f"running {len(flights)}", style="bold" if flights else "dim")
        if retries:
            line.append(f"  retried {retries}", style="yellow")
        parts: list[RenderableType] = [bar, line]
        if trials is not None:
            tl = Text(f"trials {trials.complete + trials.pruned + trials.failed}/{trials.budget}: ")
            tl.append(f"complete {trials.complete}", style="green" if trials.complete else "dim")
            tl.append("  ")
            tl.append(f"pruned {trials.pruned}", style="blue" if trials.pruned else "dim")
            tl.append("  ")
            tl.append(f"in flight {trials.in_flight}", style="bold" if trials.in_flight else "dim")
            if trials.failed:
                tl.append(f"  failed {trials.failed}", style="red")
            parts.append(tl)
        if flights:
            parts.append(self._flight_table(flights, now))
        return Group(*parts)

    def _flight_table(self, flights: list[_Flight], now: float) -> Table:
        room = max(1, self.console.size.height - 5)  # bar, counts, header, "more", prompt
        shown = flights if len(flights) <= room else flights[: max(1, room - 1)]
        table = Table(box=None, padding=(0, 1), pad_edge=False, header_style="bold", expand=True)
        table.add_column("fold", no_wrap=True)
        table.add_column("attempt", justify="right", no_wrap=True)
        table.add_column("gpu", justify="right", no_wrap=True)
        table.add_column("elapsed", justify="right", no_wrap=True)
        table.add_column("report", no_wrap=True, overflow="ellipsis", ratio=1)
        for f in shown:
            table.add_row(
                f.fold.fold_id, str(f.attempt), dash(f.gpu),
                clock(now - f.started), Text(format_report(f.report) or "-"),
            )
        if len(shown) < len(flights):
            table.add_row(Text(f"... and {len(flights) - len(shown)} more running", style="dim"))
        return table


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):
        return False


def make_printer(stream: TextIO | None = None) -> PlainLines | LiveView:
    """A :class:`LiveView` when ``stream`` (default: stdout) is a terminal and ``TERM`` is
    not ``dumb``; else :class:`PlainLines`."""
    out = stream if stream is not None else sys.stdout
    if _is_tty(out) and os.environ.get("TERM", "") != "dumb":
        return LiveView(Console(file=stream))
    return PlainLines(stream)
