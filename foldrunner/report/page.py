"""``foldrunner report``: one self-contained HTML page of a run.

plotly's JavaScript is inlined once and every figure is drawn from data in the page:
nothing is fetched from the network, so the file opens offline, from an email or a
laptop without the run dir. The page is written atomically (readers never see half of
it), readable by all like the results files: ``env`` values of the spec are redacted.
"""

from __future__ import annotations

import datetime
import html
import json
import os
from pathlib import Path

import pandas as pd
import plotly
import plotly.io as pio
import yaml

from foldrunner.report import charts
from foldrunner.report.charts import Chart, STATUS_COLOURS
from foldrunner.report.data import (RunData, metric_column, pruned_trials, ranked_trials, read_run,
                                    run_span, trial_means)
from foldrunner.errors import UsageError
from foldrunner.store.paths import PUBLIC, atomic_write
from foldrunner.ui.format import clock, ordered_counts

PathLike = str | os.PathLike[str]

TABLE_ROWS = 100
"""Trials listed in the ranked table (the best ones)."""
FAILURES_SHOWN = 50
"""Failed attempts listed with the tail of their log (the latest ones)."""
ERROR_GROUPS = 20
"""Distinct (status, error) pairs counted in the failures' summary."""
LOG_TAIL_LINES = 20
"""Lines of a failed attempt's log shown."""
LOG_TAIL_BYTES = 8192
"""Bytes read from the end of a log for its tail."""
LIVE_REFRESH_S = 30
"""While the run is live, the page reloads itself this often (``run --report`` keeps it new)."""


def write_report(run_dir: PathLike, output: PathLike | None = None) -> Path:
    """Write the report of ``run_dir`` to ``output`` (default ``RUN_DIR/report.html``);
    return its path. A :class:`~foldrunner.errors.UsageError` when ``run_dir`` is not a
    run directory."""
    data = read_run(run_dir)
    target = Path(output) if output is not None else data.paths.root / "report.html"
    if target.is_dir():
        raise UsageError(f"cannot write the report to {target}: it is a directory;"
                         " give a file name, e.g. report.html")
    if not target.parent.is_dir():
        raise UsageError(f"cannot write the report to {target}: no directory {target.parent}")
    text = render(data)

    def write(path: Path) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)

    try:
        return atomic_write(target, write, PUBLIC)
    except PermissionError as exc:  # a full disk stays a storage error (exit 1)
        raise UsageError(f"cannot write the report to {target}: {exc.strerror}") from None


def render(data: RunData) -> str:
    """The page, as text."""
    sections = [_header(data), _ranked(data)]
    figures: list[Chart] = [charts.spread(data), *charts.params_vs_objective(data),
                            *charts.learning_curves(data), charts.timeline(data), charts.memory(data)]
    sections += [_chart(c) for c in figures]
    sections += [_failures(data), _spec(data)]
    refresh = (f'<meta http-equiv="refresh" content="{LIVE_REFRESH_S}">' if data.live else "")
    return _PAGE.format(
        title=html.escape(f"foldrunner report: {data.name}"), refresh=refresh, style=_STYLE,
        plotly=plotly.offline.get_plotlyjs(), body="\n".join(sections),
        template=_json(pio.templates[charts.TEMPLATE].to_plotly_json()),
    )


# -- the sections ----------------------------------------------------------------------
def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def status_counts(data: RunData) -> list[tuple[str, int]]:
    """The folds' counts by status, as ``foldrunner status`` gives them."""
    return [(k, n) for k, n in ordered_counts(data.state.counts) if n]


def _header(data: RunData) -> str:
    e = html.escape
    span = run_span(data)
    created = data.meta.get("created_at")
    began = span[0] if span else (float(created) if created else None)
    took = clock(span[1] - span[0]) if span else "-"
    counts = status_counts(data)
    badges = " ".join(
        f'<span class="badge" style="background:{STATUS_COLOURS.get(k, "#555")}">{e(k)} {n}</span>'
        for k, n in counts
    )
    a = data.attempts
    gpus = sorted({int(g) for g in a["gpu"].dropna()}) if not a.empty else []
    hosts = sorted({h for h in a["host"] if h}) if not a.empty else []
    gpu_text = ", ".join(f"gpu {g}" for g in gpus) if gpus else "none (CPU only)"
    if len(hosts) > 1:
        gpu_text += f" on {len(hosts)} hosts ({', '.join(hosts[:8])}{', ...' if len(hosts) > 8 else ''})"
    root = data.paths.root
    command = f"foldrunner run {root / 'spec.yaml'} --run-dir {root}-again"
    if data.live:
        running = data.state.counts.get("running", 0)
        notice = (f'<div class="live">Live run: this is a snapshot taken at {e(_when(data.state.read_at))} '
                  f"while the run goes on ({running} fold(s) running). Run <code>foldrunner report "
                  f"{e(str(root))}</code> again (or <code>foldrunner run --report</code>) for a newer "
                  f"one; this page reloads itself every {LIVE_REFRESH_S} s.</div>")
    else:
        notice = ""
    rows = [
        ("run", e(data.name)),
        ("run dir", f"<code>{e(str(root))}</code>"),
        ("began", e(_when(began))),
        ("took", e(took) + (" so far" if data.live else "")),
        ("folds", f"{data.state.total} planned: {badges}"),
        ("GPUs used", e(gpu_text)),
        ("objective", e(f"{data.mode} {data.metric}") if data.metric else "none"),
        ("reproduce", f"<code>{e(command)}</code>"),
        ("report written", e(_when(data.state.read_at))),
    ]
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<header><h1>{e(data.name)}</h1>{notice}<table class="meta">{table}</table></header>'


def _ranked(data: RunData) -> str:
    df = data.results
    if df.empty:
        return _section("trials", "Trials", "<p>No fold has ended yet.</p>")
    out = trial_table(data)
    n_trials = df["trial"].nunique()
    note = (f"<p>The best {TABLE_ROWS} of {n_trials} trials; every one is in "
            f"<code>foldrunner results --summary</code>.</p>" if n_trials > TABLE_ROWS else "")
    how = (f"ranked by the mean of {html.escape(str(data.metric))} over each trial's ok folds ({data.mode}),"
           " std over folds and replicates" if metric_column(df, data.metric) else "by trial")
    table = out.to_html(index=False, classes="grid", na_rep="-", float_format=lambda x: f"{x:.4g}",
                        border=0, escape=True)
    fixed = _fixed_params(df)
    fixed_text = f"<p>The same in every trial: {html.escape(fixed)}.</p>" if fixed else ""
    return _section("trials", "Trials", f"<p>{how}.</p>{fixed_text}{note}{table}")


def varying_params(df: pd.DataFrame) -> list[str]:
    """The ``param_`` columns whose value differs between trials (all of them with one trial)."""
    cols = [c for c in df.columns if c.startswith("param_")]
    first = df.drop_duplicates("trial")
    if len(first) < 2:
        return cols
    return [c for c in cols if first[c].astype(str).nunique() > 1]


def _fixed_params(df: pd.DataFrame) -> str:
    """``epochs=15, dropout=0.1``: the params every trial shares (none with one trial)."""
    vary = set(varying_params(df))
    if df["trial"].nunique() < 2:
        return ""
    row = df.iloc[0]
    return ", ".join(f"{c.removeprefix('param_')}={row[c]}" for c in df.columns
                     if c.startswith("param_") and c not in vary)


def trial_table(data: RunData) -> pd.DataFrame:
    """The best :data:`TABLE_ROWS` trials: rank, params, the metric's mean and std over
    ok folds, folds ok and failed, and their statuses (``4 ok, 1 error``)."""
    df = data.results
    trials = ranked_trials(df, data.metric, data.mode)[:TABLE_ROWS]
    means = trial_means(df, data.metric, data.mode)
    sub = df[df["trial"].isin(trials)]
    params = varying_params(df)
    first = sub.drop_duplicates("trial").set_index("trial").reindex(trials)
    counts = pd.crosstab(sub["trial"], sub["status"]).reindex(trials, fill_value=0)
    out = pd.DataFrame({"trial": trials})
    pruned = pruned_trials(df)
    out.insert(0, "rank", [str(i + 1) if t in means.index and t not in pruned else "-"
                           for i, t in enumerate(trials)])
    for c in params:
        out[c.removeprefix("param_")] = first[c].to_numpy()
    if data.metric is not None and not means.empty:
        m = means.reindex(trials)
        out[f"{data.metric} mean"] = m["mean"].to_numpy()
        out[f"{data.metric} std"] = m["std"].to_numpy()
    ok = counts["ok"].to_numpy() if "ok" in counts.columns else 0
    out["folds ok"] = ok
    out["folds failed"] = counts.sum(axis=1).to_numpy() - ok
    out["statuses"] = [
        ", ".join(f"{n} {k}" for k, n in ordered_counts({str(k): int(v) for k, v in row.items() if v}))
        for _, row in counts.iterrows()
    ]
    return out


def _chart(c: Chart) -> str:
    note = f'<p class="note">{html.escape(c.note)}</p>' if c.note else ""
    if c.figure is None:
        return _section(c.key, c.title, note or "<p>Nothing to draw.</p>")
    fig = c.figure.to_plotly_json()
    payload = _json({"data": fig["data"], "layout": fig.get("layout", {})})
    div = f"chart-{c.key}"
    config = json.dumps({"displaylogo": False, "responsive": True})
    body = (f'{note}<div id="{div}" class="chart"></div>'
            f'<script>(function(){{var f={payload};f.layout.template=FR_TEMPLATE;'
            f'FR_PLOTS.push(Plotly.newPlot("{div}",f.data,f.layout,{config}));}})();</script>')
    return _section(c.key, c.title, body)


def _json(value: object) -> str:
    """``value`` as JSON for a script element: text in it never closes the script."""
    return str(pio.json.to_json_plotly(value)).replace("</", "<\\/")


def _failures(data: RunData) -> str:
    a = data.attempts
    failed = a[~a["status"].isin(["ok", "running", "pruned"])]  # pruned: stopped on purpose
    if failed.empty:
        return _section("failures", "Failures", "<p>No attempt failed.</p>")
    e = html.escape
    groups = (failed.groupby(["status", "error"], sort=False).size().sort_values(ascending=False)
              .head(ERROR_GROUPS))
    summary = "".join(f"<tr><td>{e(str(s))}</td><td>{n}</td><td>{e(_cut(str(err), 300))}</td></tr>"
                      for (s, err), n in zip(groups.index, groups.to_numpy()))
    latest = failed.sort_values("ended_at", ascending=False, na_position="last").head(FAILURES_SHOWN)
    items = []
    for fold_id, attempt, status, error in latest[["fold_id", "attempt", "status", "error"]].itertuples(
            index=False, name=None):
        tail = _log_tail(data.paths.log(str(fold_id), int(attempt)))
        items.append(
            f'<details class="failure"><summary><b>{e(str(fold_id))}</b> attempt {int(attempt)}: '
            f'<span class="st-{e(str(status))}">{e(str(status))}</span> &mdash; '
            f"{e(_cut(str(error), 300)) or '(no message)'}</summary>"
            f"<pre>{e(tail) if tail else '(the log is empty or missing)'}</pre></details>"
        )
    more = (f"<p>The latest {FAILURES_SHOWN} of {len(failed)} failed attempts; "
            f"<code>foldrunner logs RUN_DIR FOLD --attempt N</code> shows any log whole.</p>"
            if len(failed) > FAILURES_SHOWN else "")
    body = (f"<p>{len(failed)} attempt(s) did not end ok (retried ones included).</p>"
            f'<table class="grid"><tr><th>status</th><th>attempts</th><th>error</th></tr>{summary}</table>'
            f"{more}{''.join(items)}")
    return _section("failures", "Failures", body)


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _log_tail(path: Path) -> str:
    """The last :data:`LOG_TAIL_LINES` lines of a log ('' when it is missing)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(max(0, size - LOG_TAIL_BYTES))
        chunk = fh.read()
    lines = chunk.decode("utf-8", "replace").splitlines()
    if size > LOG_TAIL_BYTES and lines:
        lines = lines[1:]  # the first may be cut
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _spec(data: RunData) -> str:
    if not data.spec:
        return ""
    text = yaml.safe_dump(data.spec, sort_keys=False, default_flow_style=False)
    return _section("spec", "Spec", "<details><summary>The resolved spec (env values redacted)"
                    f"</summary><pre>{html.escape(text)}</pre></details>")


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{html.escape(title)}</h2>{body}</section>'


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;
padding:1em 2em;color:#222}
h1{margin:.2em 0}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table.meta th{text-align:left;padding-right:1em;color:#555;font-weight:normal}
table.grid{border-collapse:collapse;font-size:90%}
table.grid th,table.grid td{border-bottom:1px solid #eee;padding:.25em .6em;text-align:left}
table.grid th{background:#f6f6f6}
.badge{display:inline-block;color:#fff;border-radius:.8em;padding:0 .6em;margin-right:.2em;font-size:90%}
.live{background:#e8f1fb;border-left:4px solid #1f77b4;padding:.5em 1em;margin:.5em 0}
.note{color:#555;font-size:90%}
code{background:#f4f4f4;padding:0 .2em}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:85%}
details.failure{margin:.3em 0}
.chart{width:100%}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{refresh}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{style}</style>
<script>{plotly}</script><script>var FR_TEMPLATE={template};var FR_PLOTS=[];</script></head>
<body>
{body}
<footer class="note">Written by foldrunner; plotly.js inlined, nothing fetched from the network.</footer>
<script>Promise.all(FR_PLOTS).then(function(){{document.body.dataset.charts="drawn";}},
function(e){{document.body.dataset.charts="failed";throw e;}});</script>
</body></html>
"""
