"""The command line: a thin layer over the library.

Exit codes: 0 all folds ok; 1 some fold failed after its retries (or the deadline
passed), or the run dir cannot be written (a full disk, read-only); 2 bad spec or usage;
75 the run dir is locked by another live run; 130 interrupted (resumable).
"""

from __future__ import annotations

import datetime
import errno
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from foldrunner.errors import (EXIT_FAILED, EXIT_OK, FoldrunnerError, InterruptedRun, UsageError,
                               storage_error)

FORMATS = ["table", "csv", "json", "markdown"]
"""``--format``: those of :func:`foldrunner.store.results.render` (not imported here, which
would import pandas for every command)."""


def _fail(exc: FoldrunnerError) -> NoReturn:
    click.echo(f"foldrunner: error: {exc}", err=True)
    sys.exit(exc.exit_code)


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command; turn foldrunner's errors into a message and their exit code."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FoldrunnerError as exc:  # a full disk or a read-only run dir: StorageError, 1
            _fail(exc)
        except OSError as exc:  # a write foldrunner did not expect to fail: the same message
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            _fail(storage_error("a file", exc.filename or "of the run directory", exc))
        except KeyboardInterrupt:  # before the run's own signal handling (e.g. preflight)
            click.echo("foldrunner: interrupted before any fold started", err=True)
            sys.exit(InterruptedRun.exit_code)

    return wrapper


def _gpus_option(value: str | None) -> list[int] | str | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v in ("auto", "none"):
        return v
    try:
        out = [int(x) for x in v.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--gpus {value!r}: expected auto, none or indices like 0,1") from None
    if any(i < 0 for i in out) or len(set(out)) != len(out):
        raise UsageError(f"--gpus {value!r}: indices must be distinct and >= 0")
    return out


def seconds_until(text: str, now: datetime.datetime | None = None) -> float:
    """``--deadline``: a duration (``6h``, ``1h30m``) or an absolute local time
    (``06:00``: the next such time; ``2026-11-24T06:00``)."""
    from foldrunner.config.units import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        why = str(exc)
    now = now or datetime.datetime.now()
    try:
        if "T" in text or "-" in text:
            at = datetime.datetime.fromisoformat(text)
        else:
            t = datetime.time.fromisoformat(text)
            at = datetime.datetime.combine(now.date(), t)
            if at <= now:
                at += datetime.timedelta(days=1)
    except ValueError:
        raise UsageError(
            f"--deadline {text!r}: not a duration ({why}) nor a time like 06:00 or 2026-11-24T06:00"
        ) from None
    if at.tzinfo is not None:
        now = now.astimezone(at.tzinfo) if now.tzinfo else now.astimezone().astimezone(at.tzinfo)
    left = (at - now).total_seconds()
    if left <= 0:
        raise UsageError(f"--deadline {text!r} is in the past")
    return left


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="foldrunner")
def main() -> None:
    """Run every cross-validation fold in a fresh process."""


@main.command("run")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a spec value, e.g. -o limits.timeout=10m (repeatable).")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Run directory (default: output.dir).")
@click.option("--resume", is_flag=True, help="Finish a run: only folds without an ok result.")
@click.option("--gpus", help="GPUs to use: auto, none or indices like 0,1 (auto or none with"
              " --backend ray).")
@click.option("--workers", type=click.IntRange(min=1),
              help="Concurrent folds without GPUs (with --backend ray: folds in flight across the"
              " cluster).")
@click.option("--deadline", help="Stop launching and cancel running folds after this long (e.g. 6h).")
@click.option("--backend", type=click.Choice(["local", "ray"]),
              help="Where folds run: local (this machine) or ray (a Ray cluster; pip install"
              " 'foldrunner[ray]'). Overrides the spec's backend.")
@click.option("--address", metavar="HOST:PORT",
              help="The Ray cluster's head, HOST:PORT (or auto, or local for a private Ray on"
              " this machine). Overrides ray.address; needs the ray backend.")
@click.option("--report", "report", is_flag=True,
              help="Keep RUN_DIR/report.html up to date as folds finish (see `foldrunner report`;"
              " pip install 'foldrunner[report]').")
@_guard
def run_cmd(spec: str, overrides: tuple[str, ...], run_dir: str | None, resume: bool,
            gpus: str | None, workers: int | None, deadline: str | None, backend: str | None,
            address: str | None, report: bool) -> None:
    """Run every fold of SPEC."""
    from foldrunner.engine.events import Events, Fanout, Guarded
    from foldrunner.orchestrate.api import RunOptions, prepare_spec, run
    from foldrunner.orchestrate.backend import check_backend
    from foldrunner.ui.live import make_printer

    deadline_at = None if deadline is None else time.monotonic() + seconds_until(deadline)
    opts = RunOptions(
        run_dir=Path(run_dir) if run_dir else None, resume=resume,
        gpus=_gpus_option(gpus), workers=workers, deadline=deadline_at,
        backend=backend, address=address,
    )
    s = prepare_spec(spec, list(overrides))
    check_backend(s, opts)  # before anything is launched or written
    printer = make_printer()
    events: Events = printer
    live_report = None
    if report:
        from foldrunner.report.live import LiveReport, check_report_deps

        check_report_deps()  # before anything is launched
        live_report = LiveReport(opts.run_dir or s.run_dir(), notes=printer.note)
        events = Fanout(printer, Guarded(live_report, printer.note))
    try:
        df = run(s, options=opts, events=events, notes=printer.note)
    finally:
        printer.stop()
        if live_report is not None:
            live_report.finish()
    printer.summary(df)
    if len(df) > 1:
        from foldrunner.store.results import render, summarize

        metric, mode = df.attrs.get("objective", (None, "max"))
        printer.table(render(summarize(df, metric, mode).head(20), "table"))
    failed = int((~df["status"].isin(["ok", "pruned"])).sum()) if len(df) else 0  # pruned: by design
    incomplete = len(df) < int(df.attrs.get("planned", len(df)))
    sys.exit(EXIT_FAILED if failed or incomplete else EXIT_OK)


@main.command("plan")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table")
@_guard
def plan_cmd(spec: str, overrides: tuple[str, ...], fmt: str) -> None:
    """Validate SPEC and list its folds; launch nothing."""
    import pandas as pd

    from foldrunner.config.plan import build_plan
    from foldrunner.store.results import render
    from foldrunner.config.spec import load_spec
    from foldrunner.orchestrate.backend import describe_backend

    s = load_spec(spec, list(overrides))
    plan = build_plan(s)
    if plan.adaptive is not None:
        from foldrunner.search.study import describe_search

        head, space = describe_search(s, plan.adaptive)
        if fmt == "table":
            click.echo(f"{head}; plan {plan.hash}; run dir {s.run_dir()}; {describe_backend(s)}")
        click.echo(render(pd.DataFrame(space), fmt))
        return
    rows = [
        {"fold_id": f.fold_id, "trial": f.trial, "replicate": f.replicate, "fold": f.fold,
         "seed": f.seed, **{f"param_{k}": v for k, v in f.params.items()}}
        for f in plan.folds
    ]
    if fmt == "table":
        click.echo(
            f"{s.name}: {len(plan.trials)} trial(s) x {s.cv.replicates} replicate(s) x "
            f"{s.cv.folds} fold(s) = {len(plan.folds)} folds; plan {plan.hash}; "
            f"run dir {s.run_dir()}; {describe_backend(s)}"
        )
    click.echo(render(pd.DataFrame(rows), fmt))


@main.command("results")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--summary", is_flag=True, help="One row per trial, ranked by the objective.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table")
@_guard
def results_cmd(run_dir: str, summary: bool, fmt: str) -> None:
    """Print the results table of RUN_DIR."""
    from foldrunner.store.results import load_results, render, summarize

    df = load_results(run_dir)
    if summary:
        metric, mode = _objective(Path(run_dir))
        df = summarize(df, metric, mode)
    elif fmt in ("table", "markdown"):  # for people: no raw timestamps and paths
        df = df.drop(columns=["started_at", "ended_at", "log"], errors="ignore")
    click.echo(render(df, fmt))


def _objective(run_dir: Path) -> tuple[str | None, str]:
    """``(metric, mode)`` of the run's objective; ``(None, "max")`` without one."""
    from foldrunner.ui.status import run_spec

    s = run_spec(run_dir)
    if s is None or s.objective is None:
        return None, "max"
    return s.objective.metric, s.objective.mode


@main.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--output", type=click.Path(dir_okay=False),
              help="Where to write the page (default: RUN_DIR/report.html).")
@_guard
def report_cmd(run_dir: str, output: str | None) -> None:
    """Write one self-contained HTML report of RUN_DIR (works while the run is live)."""
    from foldrunner.report.live import check_report_deps

    check_report_deps()
    from foldrunner.report.page import write_report

    click.echo(f"report written to {write_report(run_dir, output)}")


@main.command("gpus")
@_guard
def gpus_cmd() -> None:
    """List the GPUs NVML sees, their memory and processes, and how GPU memory is read
    per process here (pids match, mapped through NSpid, or the per-GPU fallback)."""
    from foldrunner.gpu.inventory import NvmlInventory, listing

    inventory = NvmlInventory()
    try:
        click.echo("\n".join(listing(inventory)))
    finally:
        inventory.close()


@main.command("status")
@click.argument("run_dir", type=click.Path(file_okay=False))
@_guard
def status_cmd(run_dir: str) -> None:
    """Counts by status, whether the run is live, and its running folds (works while it runs)."""
    from foldrunner.ui.status import run_status

    click.echo(run_status(run_dir))


@main.command("logs")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("fold")
@click.option("--attempt", type=click.IntRange(min=1), help="Attempt number (default: the latest).")
@click.option("-f", "--follow", "follow_", is_flag=True,
              help="Keep printing what the attempt writes until it ends.")
@_guard
def logs_cmd(run_dir: str, fold: str, attempt: int | None, follow_: bool) -> None:
    """Print the captured stdout and stderr of FOLD (e.g. t0-r0-f1)."""
    import os

    from foldrunner.ui.logs import attempt_watch, follow, resolve_log

    number, path = resolve_log(run_dir, fold, attempt)
    try:
        if follow_:
            with attempt_watch(run_dir, fold, number) as ended:
                for text in follow(path, ended):
                    click.echo(text, nl=False)
        elif path.exists():
            out = sys.stdout.buffer
            with path.open("rb") as f:
                while chunk := f.read(1 << 16):
                    out.write(chunk)
            out.flush()
        else:
            click.echo(f"foldrunner: {fold} attempt {number} has written nothing yet ({path})", err=True)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `foldrunner logs ... | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":  # pragma: no cover
    main()
