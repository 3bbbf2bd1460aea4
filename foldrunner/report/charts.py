"""The report's charts, one function each: plotly figures drawn from a :class:`RunData`.

Every chart stays small whatever the run's size: trials are capped to the best ones
(:data:`TOP_TRIALS`), learning curves are thinned to :data:`CURVE_POINTS` points per
attempt, and charts with a point per attempt switch to WebGL (``scattergl``) past
:data:`GL_POINTS`, with every attempt of one status in one trace (bars as line
segments), so a run of 20,000 folds draws as fast as one of 20.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from foldrunner.report.data import CURVE_TRIALS, RunData, metric_column, run_span
from foldrunner.report.data import ranked_trials as data_ranked_trials
from foldrunner.report.data import trial_means as data_trial_means

TOP_TRIALS = 30
"""Trials (the best by the objective) whose spread over folds is drawn."""
CURVE_METRICS = 4
"""Reported metrics drawn as learning curves (the objective's first)."""
CURVE_POINTS = 200
"""Points of one attempt's learning curve at most (evenly thinned, its last kept)."""
PARAMS_SHOWN = 12
"""Parameters drawn against the objective at most (those that vary)."""
GL_POINTS = 2000
"""Points past which a chart draws with WebGL (``scattergl``) rather than SVG."""

STATUS_COLOURS = {
    "ok": "#2ca02c", "running": "#1f77b4", "error": "#d62728", "timeout": "#ff7f0e",
    "crashed": "#9467bd", "memory": "#8c564b", "cancelled": "#7f7f7f", "pruned": "#bcbd22",
}
TRIAL_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22", "#17becf"]
TEMPLATE = "plotly_white"
"""The look of every chart: sent once in the page and set on each chart there (setting it
on each figure here costs 50 ms a figure)."""
LAYOUT: dict[str, Any] = {"template": {}, "margin": {"l": 60, "r": 20, "t": 40, "b": 50},
                          "height": 420, "hovermode": "closest"}


@dataclass(frozen=True)
class Chart:
    """One section's chart: a figure, or a note saying why there is none."""

    key: str
    title: str
    figure: go.Figure | None
    note: str = ""


# -- helpers ---------------------------------------------------------------------------
def metric_col(data: RunData) -> str | None:
    """The results column of the ranking metric, when it has numbers."""
    return metric_column(data.results, data.metric)


def trial_means(data: RunData) -> pd.DataFrame:
    """Per trial: ``mean``, ``std``, ``n`` of the ranking metric over its ok folds, best first."""
    return data_trial_means(data.results, data.metric, data.mode)


def ranked_trials(data: RunData) -> list[int]:
    """Trials best first: those with the metric ranked, then the rest by number."""
    return data_ranked_trials(data.results, data.metric, data.mode)


def time_unit(span_s: float) -> tuple[str, float]:
    """The unit a time axis of ``span_s`` seconds reads best in: ``(name, seconds)``."""
    if span_s < 600:
        return "s", 1.0
    if span_s < 36000:
        return "min", 60.0
    return "h", 3600.0


def _round(values: Any, digits: int = 4) -> np.ndarray[Any, Any]:
    """Floats to ``digits`` significant digits: a smaller page, the same picture."""
    arr = np.asarray(values, dtype="float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(np.isfinite(arr) & (arr != 0), np.floor(np.log10(np.abs(arr))), 0)
    scale = 10.0 ** (digits - 1 - mag)
    return np.asarray(np.round(arr * scale) / scale)


def _scatter(n: int) -> Any:
    """The trace type for ``n`` points: WebGL past :data:`GL_POINTS`, else SVG."""
    return go.Scattergl if n > GL_POINTS else go.Scatter


def _label(trial: int, params: dict[str, Any]) -> str:
    shown = ", ".join(f"{k}={_short(v)}" for k, v in list(params.items())[:4])
    return f"trial {trial}" + (f" ({shown})" if shown else "")


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def trial_params(data: RunData, varying_only: bool = True) -> dict[int, dict[str, Any]]:
    """Each trial's params (``param_`` stripped); with ``varying_only`` those that differ
    between trials only."""
    first = data.results.drop_duplicates("trial")
    cols = [c for c in first.columns if c.startswith("param_")]
    if varying_only:
        cols = [c for c in cols if first[c].astype(str).nunique() > 1]
    return {
        int(t): {c[len("param_"):]: v for c, v in zip(cols, values)}
        for t, *values in first[["trial", *cols]].itertuples(index=False, name=None)
    }


# -- the charts ------------------------------------------------------------------------
def spread(data: RunData) -> Chart:
    """Each trial's metric over its ok folds and replicates: a box with every point."""
    title = "Spread over folds"
    col = metric_col(data)
    if col is None:
        return Chart("spread", title, None, "No fold has returned the ranking metric yet.")
    means = trial_means(data)
    trials = [int(t) for t in means.index[:TOP_TRIALS]]
    ok = data.results[(data.results["status"] == "ok") & data.results["trial"].isin(trials)]
    params = trial_params(data)
    by_trial = dict(list(ok.groupby("trial")))
    fig = go.Figure()
    for i, t in enumerate(trials):
        g = by_trial[t]
        fig.add_trace(go.Box(
            y=_round(g[col]), name=f"trial {t}", boxpoints="all", jitter=0.4, pointpos=0,
            text=g["fold_id"], hovertemplate="%{text}: %{y}<extra>" + _label(t, params.get(t, {})) + "</extra>",
            marker={"color": TRIAL_COLOURS[i % len(TRIAL_COLOURS)], "size": 5},
            line={"width": 1}, showlegend=False,
        ))
    fig.update_layout(**LAYOUT, yaxis_title=data.metric,
                      xaxis={"categoryorder": "array", "categoryarray": [f"trial {t}" for t in trials]})
    more = len(means) - len(trials)
    note = f"The best {len(trials)} of {len(means)} trials, best first." if more > 0 else "Best first."
    return Chart("spread", title, fig, note + f" Each point is one ok fold ({data.mode} {data.metric}).")


def params_vs_objective(data: RunData) -> list[Chart]:
    """Each varying parameter against the trials' mean metric; parallel coordinates
    when several vary."""
    title = "Parameters against the objective"
    means = trial_means(data)
    params = trial_params(data)
    names = list(next(iter(params.values()), {}).keys())[:PARAMS_SHOWN]
    if means.empty or not names:
        why = ("No fold has returned the ranking metric yet." if means.empty
               else "No parameter varies between trials.")
        return [Chart("params", title, None, why)]
    trials = [int(t) for t in means.index]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, shared_yaxes=True,
                        horizontal_spacing=0.06, vertical_spacing=0.12 if rows > 1 else 0.0)
    text = np.array([_label(t, params[t]) for t in trials], dtype=object)
    for i, name in enumerate(names):
        x = np.array([params[t][name] for t in trials], dtype=object)
        fig.add_trace(_scatter(len(trials))(
            x=x, y=_round(means["mean"]), mode="markers", text=text, showlegend=False,
            error_y={"type": "data", "array": _round(means["std"].fillna(0)), "thickness": 1},
            marker={"size": 7, "color": "#1f77b4", "opacity": 0.8},
            hovertemplate="%{text}<br>mean %{y}<extra></extra>",
        ), row=i // cols + 1, col=i % cols + 1)
    fig.update_layout(**{**LAYOUT, "height": 320 * rows})
    fig.update_yaxes(title_text=f"mean {data.metric}", col=1)
    charts = [Chart("params", title, fig,
                    f"One point per trial: its mean {data.metric} over its ok folds, bars one std.")]
    if len(names) > 1:
        dims = []
        for name in names:
            vals = [params[t][name] for t in trials]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                dims.append({"label": name, "values": _round(vals)})
            else:
                cats = sorted({str(v) for v in vals})
                code = {c: j for j, c in enumerate(cats)}
                dims.append({"label": name, "values": [code[str(v)] for v in vals],
                             "tickvals": list(range(len(cats))), "ticktext": cats})
        dims.append({"label": f"mean {data.metric}", "values": _round(means["mean"])})
        par = go.Figure(go.Parcoords(
            dimensions=dims,
            line={"color": _round(means["mean"]), "colorscale": "Viridis", "showscale": True,
                  "reversescale": data.mode == "min"},
        ))
        par.update_layout(**{**LAYOUT, "margin": {"l": 60, "r": 60, "t": 60, "b": 30}})
        charts.append(Chart("parcoords", "Parallel coordinates", par,
                            "One line per trial; drag along an axis to select a range."))
    return charts


def learning_curves(data: RunData) -> list[Chart]:
    """From the report history: per metric, the best trials' attempts as thin lines (one
    colour per trial) and each trial's mean over its folds as a thick one."""
    title = "Learning curves"
    rep = data.reports
    metrics = [str(c) for c in rep.columns if str(c).startswith("metric_") and c != "metric_epoch"
               and pd.api.types.is_numeric_dtype(rep[c]) and rep[c].notna().any()]
    if rep.empty or not metrics:
        return [Chart("curves", title, None, "No fold has called ctx.report with numbers yet.")]
    preferred = {f"metric_{data.metric}", f"metric_val_{data.metric}"}
    metrics = sorted(metrics, key=lambda c: c not in preferred)  # stable: report order
    ranked = ranked_trials(data)
    params = trial_params(data)
    has_epoch = "metric_epoch" in rep.columns and pd.api.types.is_numeric_dtype(rep["metric_epoch"])
    charts = []
    for metric in metrics[:CURVE_METRICS]:
        name = metric[len("metric_"):]
        rows = rep[rep[metric].notna()]
        have = set(int(t) for t in rows["trial"].dropna())
        trials = [t for t in ranked if t in have][:CURVE_TRIALS]  # data.reports has no more
        xcol = "metric_epoch" if has_epoch and rows["metric_epoch"].notna().all() else "seq"
        fig = go.Figure()
        for i, t in enumerate(trials):
            fig.add_traces(_trial_curves(rows[rows["trial"] == t], metric, xcol, t,
                                         _label(t, params.get(t, {})),
                                         TRIAL_COLOURS[i % len(TRIAL_COLOURS)]))
        fig.update_layout(**LAYOUT, xaxis_title="epoch" if xcol == "metric_epoch" else "report #",
                          yaxis_title=name, legend={"font": {"size": 10}})
        many = data.results["trial"].nunique() > len(trials)
        shown = f"the best {len(trials)} trials that report it" if many else "every trial that reports it"
        charts.append(Chart(f"curve-{name}", f"{title}: {name}", fig,
                            f"{shown.capitalize()}: each attempt a thin line, each trial's mean "
                            "over its folds a thick one (click a legend entry to hide a trial)."))
    return charts


def _trial_curves(g: pd.DataFrame, metric: str, xcol: str, trial: int, label: str,
                  colour: str) -> list[go.Scatter]:
    """One trial's attempts as one trace of thin lines (split by gaps), and its mean."""
    xs: list[Any] = []
    ys: list[Any] = []
    texts: list[Any] = []
    gap = np.array([np.nan])
    for (fold_id, attempt), a in g.groupby(["fold_id", "attempt"], sort=True):
        a = _thin(a, CURVE_POINTS)
        xs += [a[xcol].to_numpy("float64", na_value=np.nan), gap]
        ys += [_round(a[metric]), gap]
        texts += [np.full(len(a) + 1, f"{fold_id} attempt {attempt}", dtype=object)]
    mean = g.groupby(xcol)[metric].mean()
    return [
        go.Scatter(x=np.concatenate(xs), y=np.concatenate(ys), text=np.concatenate(texts), mode="lines", line={"width": 1, "color": colour},
                   opacity=0.45, name=label, legendgroup=str(trial), showlegend=False,
                   hovertemplate="%{text}<br>%{x}: %{y}<extra>" + f"trial {trial}" + "</extra>"),
        go.Scatter(x=mean.index.to_numpy("float64"), y=_round(mean.to_numpy()), mode="lines", name=label,
                   line={"width": 3, "color": colour}, legendgroup=str(trial),
                   hovertemplate="mean %{y}<extra>" + f"trial {trial}" + "</extra>"),
    ]


def _thin(a: pd.DataFrame, points: int) -> pd.DataFrame:
    """At most ``points`` rows of ``a``, evenly spread, its last kept."""
    if len(a) <= points:
        return a
    idx = np.unique(np.linspace(0, len(a) - 1, points).round().astype(int))
    return a.iloc[idx]


def assign_lanes(attempts: pd.DataFrame, end_now: float) -> tuple[list[int], list[str]]:
    """A lane per slot: for each host and GPU (or none), attempts packed into the fewest
    lanes that never overlap (so ``per_gpu: 2`` gives two lanes per GPU, ``workers: 4``
    four CPU lanes). Returns each attempt's lane number and the lanes' names."""
    hosts = attempts["host"].unique()
    several_hosts = len(hosts) > 1
    lane_of = [0] * len(attempts)
    names: list[str] = []
    groups: dict[tuple[str, int | None], list[float]] = {}  # per slot group: each lane's end
    first_lane: dict[tuple[str, int | None], list[int]] = {}
    order = np.argsort(attempts["started_at"].to_numpy(), kind="stable")
    starts = attempts["started_at"].to_numpy()
    ends = attempts["ended_at"].fillna(end_now).to_numpy()
    gpus = attempts["gpu"].tolist()
    hosts_col = attempts["host"].tolist()
    for i in order:
        gpu = None if gpus[i] is pd.NA or gpus[i] is None else int(gpus[i])
        key = (hosts_col[i], gpu)
        lanes = groups.setdefault(key, [])
        ids = first_lane.setdefault(key, [])
        for j, lane_end in enumerate(lanes):
            if lane_end <= starts[i] + 1e-6:
                lanes[j] = ends[i]
                lane_of[i] = ids[j]
                break
        else:
            lanes.append(ends[i])
            where = f"{hosts_col[i]} " if several_hosts else ""
            slot = f"gpu {gpu}" if gpu is not None else "cpu"
            ids.append(len(names))
            names.append(f"{where}{slot} #{len(lanes)}")
            lane_of[i] = ids[-1]
    # lanes sorted by name: the GPUs in order, each one's shares together
    ranked = sorted(range(len(names)), key=lambda k: _lane_key(names[k]))
    renumber = {old: new for new, old in enumerate(ranked)}
    return [renumber[k] for k in lane_of], [names[k] for k in ranked]


def _lane_key(name: str) -> tuple[Any, ...]:
    parts = name.replace("#", " ").split()
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def timeline(data: RunData) -> Chart:
    """One lane per slot, one bar per attempt coloured by its status."""
    title = "Timeline"
    a = launched(data.attempts)
    span = run_span(data)
    if a.empty or span is None:
        return Chart("timeline", title, None, "No attempt has started yet.")
    t0, t1 = span
    unit, scale = time_unit(t1 - t0)
    lanes, names = assign_lanes(a, t1)
    a = a.assign(lane=lanes)
    a_end = a["ended_at"].fillna(t1)
    x0 = _round((a["started_at"] - t0) / scale, 5)
    x1 = _round((a_end - t0) / scale, 5)
    fig = go.Figure()
    width = max(2.0, min(18.0, 320.0 / max(1, len(names))))
    kind = _scatter(len(a))
    for status, idx in _by_status(a["status"]):
        n = len(idx)
        xs = np.empty(3 * n)
        ys = np.empty(3 * n)
        xs[0::3], xs[1::3], xs[2::3] = x0[idx], x1[idx], np.nan
        ys[0::3] = ys[1::3] = a["lane"].to_numpy()[idx]
        ys[2::3] = np.nan
        sub = a.iloc[idx]
        label = (sub["fold_id"] + " #" + sub["attempt"].astype(str) + " " + status + " "
                 + sub["duration_s"].round(1).astype(str).str.replace("nan", "running") + "s").tolist()
        text = np.empty(3 * n, dtype=object)
        text[0::3] = text[1::3] = label
        text[2::3] = ""
        fig.add_trace(kind(
            x=xs, y=ys, mode="lines", name=f"{status} ({n})", text=text,
            line={"width": width, "color": STATUS_COLOURS.get(status, "#333333")},
            hovertemplate="%{text}<extra></extra>", connectgaps=False,
        ))
    height = max(260, min(900, 80 + 24 * len(names)))
    fig.update_layout(**{**LAYOUT, "height": height}, xaxis_title=f"time since the run began ({unit})",
                      yaxis={"tickvals": list(range(len(names))), "ticktext": names,
                             "autorange": "reversed", "zeroline": False},
                      legend={"orientation": "h", "y": 1.08})
    return Chart("timeline", title, fig,
                 f"{len(names)} slot lane(s), {len(a)} attempt(s): gaps are idle slots, long bars stragglers.")


def launched(attempts: pd.DataFrame) -> pd.DataFrame:
    """The attempts that had a process (not the ``pruned`` rows of folds never launched)."""
    return attempts[attempts["pid"].notna() | (attempts["status"] != "pruned")]


def _by_status(status: pd.Series) -> Iterable[tuple[str, np.ndarray[Any, Any]]]:
    values = status.to_numpy()
    for s in sorted(set(values), key=lambda s: (list(STATUS_COLOURS).index(s) if s in STATUS_COLOURS else 99, s)):
        yield str(s), np.flatnonzero(values == s)


def memory(data: RunData) -> Chart:
    """Peak host and GPU memory of every attempt, against when it started."""
    title = "Peak memory per fold"
    a = data.attempts
    span = run_span(data)
    has = a[a["peak_rss_mb"].notna() | a["peak_gpu_mb"].notna()]
    if has.empty or span is None:
        return Chart("memory", title, None, "No attempt has a memory reading yet.")
    t0, t1 = span
    unit, scale = time_unit(t1 - t0)
    fig = go.Figure()
    for col, name, colour in (("peak_rss_mb", "host (RSS of the tree)", "#1f77b4"),
                              ("peak_gpu_mb", "GPU", "#ff7f0e")):
        g = has[has[col].notna()]
        if g.empty:
            continue
        fig.add_trace(_scatter(len(g))(
            x=_round((g["started_at"] - t0) / scale, 5), y=_round(g[col]), mode="markers",
            name=f"{name} ({len(g)})", text=(g["fold_id"] + " #" + g["attempt"].astype(str)).to_numpy(object),
            marker={"size": 5, "color": colour, "opacity": 0.7},
            hovertemplate="%{text}: %{y} MB<extra>" + name + "</extra>",
        ))
    fig.update_layout(**LAYOUT, xaxis_title=f"attempt started ({unit} since the run began)",
                      yaxis_title="peak MB", legend={"orientation": "h", "y": 1.08})
    return Chart("memory", title, fig, "One point per attempt: memory that creeps up shows as a slope.")
