"""Drawing: plotly figures of a ``reports.data.ReportData``. Nothing is computed here but what a figure shows.

Axes, titles and hover text come from the metric registry (``Metric.axis_title``, ``log_scale``, ``format``), so
a search over any objectives draws its own.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from peft_search.reports.data import Front2D, ReportData
from peft_search.search.results.metrics import Objective, get_metric, metrics
from peft_search.spaces.registry import family_of

_SYMBOLS = {"none": "circle", "int8": "square", "nf4": "diamond", "fp4": "triangle-up"}
_PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
    "#7b4173",
]


def _colors(methods: Sequence[str]) -> dict[str, str]:
    return {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(sorted(set(methods)))}


def shown_metrics(objectives: Sequence[Objective], columns: Sequence[str]) -> list[str]:
    """The objectives, then the registry's summary metrics the table has: what hover text and the terminal show."""
    names = [o.metric for o in objectives]
    names += [m.name for m in metrics() if m.summary and m.name not in names and m.name in columns]
    return names


def interval_text(row, name: str) -> str:
    """``0.8867 [0.845, 0.919]``: a value and, when it has one, its 95 % interval."""
    metric = get_metric(name)
    text = metric.format(row.get(name))
    if metric.interval and all(pd.notna(row.get(b)) for b in metric.interval):
        low, high = (metric.format(row.get(b)) for b in metric.interval)
        text += f" [{low}, {high}]"
    return text


def hover_texts(df: pd.DataFrame, objectives: Sequence[Objective]) -> pd.Series:
    """Per trial: its metrics as the registry formats them, and the full PEFT config. Plotly renders hover text as
    markup, so it is escaped."""
    names = shown_metrics(objectives, list(df.columns))
    out = []
    for _, r in df.iterrows():
        cfg = r.get("peft_config")
        cfg = json.dumps(json.loads(cfg), indent=1) if isinstance(cfg, str) else ""
        lines = [f"trial {r['trial_id']} · {r.get('method')} · {r.get('quantization')}"]
        if pd.notna(r.get("runs")) and r.get("runs", 1) > 1:
            lines.append(f"mean of {int(r['runs'])} runs (seed repeats); interval over the runs")
        lines += [f"{get_metric(n).label} {interval_text(r, n)}" for n in names]
        lr = r.get("learning_rate")
        lines += [f"lr {float(lr):.3g}" if pd.notna(lr) else "lr -", cfg]
        out.append(html.escape("\n".join(lines)).replace("\n", "<br>"))
    return pd.Series(out, index=df.index, dtype=object)


def error_bars(df: pd.DataFrame, metric: str) -> dict | None:
    """Plotly error bars for ``metric`` from its confidence interval's columns (``Metric.interval``), if any."""
    bounds = get_metric(metric).interval
    if bounds is None or not all(b in df for b in bounds) or df[list(bounds)].isna().all().all():
        return None
    low, high = (pd.to_numeric(df[b], errors="coerce").astype(float) for b in bounds)
    value = df[metric].astype(float)
    return {
        "type": "data",
        "symmetric": False,
        "array": (high - value).clip(lower=0).fillna(0).tolist(),
        "arrayminus": (value - low).clip(lower=0).fillna(0).tolist(),
        "thickness": 1,
        "width": 3,
        "color": "rgba(60,60,60,0.5)",
    }


def display_unit(metric: str, values: pd.Series) -> tuple[float, str | None]:
    """How a metric is drawn on an axis: (divide the values by, unit for the title). Bytes in GiB or MiB (never
    plotly's SI "1.2B"), accuracies as percentages, everything else as stored."""
    spec = get_metric(metric)
    if spec.unit == "bytes":
        largest = float(pd.to_numeric(values, errors="coerce").max()) if len(values) else 0.0
        return (2.0**30, "GiB") if largest >= 2**30 else (2.0**20, "MiB")
    if spec.unit == "fraction":
        return 1.0, "%"
    return 1.0, None


def _shown(df: pd.DataFrame, metric: str, scale: float) -> pd.Series:
    return pd.to_numeric(df[metric], errors="coerce").astype(float) / scale


def _axis(objective: Objective, values: pd.Series) -> dict:
    spec = objective.spec
    scale, unit = display_unit(objective.metric, values)
    title = f"{spec.label} ({unit})" if unit else spec.axis_title
    axis = {"title": title, "type": "log" if spec.log_scale else "linear"}
    if spec.unit == "fraction":
        axis["tickformat"] = ".0%"
    return axis


def pareto_scatter(data: ReportData, pair: Front2D, hover: pd.Series) -> go.Figure:
    """The first objective against another: points coloured by method, marked by quantization; the front joined."""
    x, y = pair.x.metric, pair.y.metric
    done = data.complete
    sx, sy = display_unit(x, done[x])[0], display_unit(y, done[y])[0]
    colors = _colors(done["method"].astype(str)) if not done.empty else {}
    fig = go.Figure()
    for (method, quant), group in done.groupby(["method", "quantization"], dropna=False):
        fig.add_trace(
            go.Scatter(
                x=_shown(group, x, sx),
                y=_shown(group, y, sy),
                mode="markers",
                name=f"{method} · {quant}",
                legendgroup=family_of(str(method)),
                legendgrouptitle_text=family_of(str(method)),
                marker={
                    "color": colors[str(method)],
                    "symbol": _SYMBOLS.get(quant, "circle"),
                    "size": 10,
                    "line": {"width": 1, "color": "#333"},
                },
                error_y=error_bars(group, y),
                text=hover.loc[group.index].tolist(),
                hovertemplate="%{text}<extra></extra>",
            )
        )
    if not pair.front.empty:
        fig.add_trace(
            go.Scatter(
                x=_shown(pair.front, x, sx),
                y=_shown(pair.front, y, sy),
                mode="lines+markers",
                name="Pareto front",
                line={"color": "black", "dash": "dot", "shape": "hv"},
                marker={"size": 16, "color": "rgba(0,0,0,0)", "line": {"width": 2, "color": "black"}},
                hoverinfo="skip",
            )
        )
    ylabel = pair.y.spec.label
    fig.update_layout(
        title=f"{ylabel[:1].upper() + ylabel[1:]} vs {pair.x.spec.label}",
        xaxis=_axis(pair.x, done[x]),
        yaxis=_axis(pair.y, done[y]),
        legend_title="method · quantization",
        height=480,
    )
    return fig


def scatter_3d(data: ReportData, hover: pd.Series) -> go.Figure:
    """Three objectives at once: the second and third as x and y, the first as z; the full front as diamonds."""
    first, second, third = data.objectives
    done = data.complete
    colors = _colors(done["method"].astype(str)) if not done.empty else {}
    front_ids = set(data.front["trial_id"])
    scales = {o.metric: display_unit(o.metric, done[o.metric])[0] for o in (first, second, third)}
    fig = go.Figure()
    for method, group in done.groupby("method", dropna=False):
        on_front = [t in front_ids for t in group["trial_id"]]
        fig.add_trace(
            go.Scatter3d(
                x=_shown(group, second.metric, scales[second.metric]),
                y=_shown(group, third.metric, scales[third.metric]),
                z=_shown(group, first.metric, scales[first.metric]),
                mode="markers",
                name=str(method),
                marker={
                    "color": colors[str(method)],
                    "size": [9 if f else 5 for f in on_front],
                    "symbol": ["diamond" if f else "circle" for f in on_front],
                },
                text=hover.loc[group.index].tolist(),
                hovertemplate="%{text}<extra></extra>",
            )
        )
    fig.update_layout(
        title="Three objectives (Pareto-optimal trials drawn as larger diamonds)",
        height=560,
        scene={
            "xaxis": _axis(second, done[second.metric]),
            "yaxis": _axis(third, done[third.metric]),
            "zaxis": _axis(first, done[first.metric]),
        },
    )
    return fig


def reference_caption(data: ReportData) -> str:
    """The reference point in each metric's own units: ``held-out accuracy 0.0000, trainable parameters 330``."""
    parts = [
        f"{o.spec.label} {o.spec.format(0.0 - v if o.mode == 'max' else v)}"
        for o, v in zip(data.objectives, data.reference, strict=True)
    ]
    return "reference point: " + ", ".join(parts)


def hypervolume_history_share(history: pd.DataFrame) -> pd.Series:
    """The front's hypervolume after each completed trial, as a share of the final one (1.0 at the end)."""
    hv = history["hypervolume"].astype(float)
    final = float(hv.iloc[-1]) if len(hv) else 0.0
    return hv / final if final > 0 else hv * 0.0


def hypervolume_figure(data: ReportData) -> go.Figure:
    history = data.history
    fig = go.Figure(
        go.Scatter(
            x=history["completed_trials"],
            y=hypervolume_history_share(history),
            mode="lines+markers",
            name="hypervolume",
        )
    )
    fig.update_layout(
        title="Search progress: how much of the final front's hypervolume the trials so far had reached",
        xaxis_title="completed trials",
        yaxis_title="hypervolume (% of the final front's)",
        yaxis_tickformat=".0%",
        height=380,
        annotations=[
            {
                "text": html.escape(reference_caption(data)),
                "xref": "paper",
                "yref": "paper",
                "x": 0,
                "y": 1.08,
                "showarrow": False,
            }
        ],
    )
    return fig


def importance_figure(importances: dict[str, dict[str, float]], n_trials: int) -> go.Figure:
    fig = go.Figure()
    for objective, values in importances.items():
        fig.add_trace(go.Bar(x=list(values.values()), y=list(values.keys()), orientation="h", name=objective))
    fig.update_layout(
        title=f"What mattered, per objective: how differently each parameter is distributed in the best trials "
        f"than in all {n_trials} sampled trials (Optuna's PED-ANOVA importance, shares summing to 1; "
        "few trials give noisy importances)",
        xaxis_title="importance (share of the objective's total)",
        barmode="group",
        height=420,
    )
    return fig


def _categories(label: str, values: pd.Series) -> dict:
    values = values.astype(str)
    names = sorted(set(values))
    return {
        "label": label,
        "values": [names.index(v) for v in values],
        "tickvals": list(range(len(names))),
        "ticktext": names,
    }


def parallel_coordinates(data: ReportData) -> go.Figure:
    """Method, quantization and learning rate against every objective (log axes as log10), coloured by the first."""
    done = data.complete
    dims = [
        _categories("method", done["method"]),
        _categories("quantization", done["quantization"]),
        {"label": "log10 learning rate", "values": np.log10(done["learning_rate"].astype(float))},
    ]
    for o in data.objectives:
        values = done[o.metric].astype(float)
        scale, unit = display_unit(o.metric, values)
        if o.spec.unit == "bytes":
            dims.append({"label": f"{o.spec.label} ({unit})", "values": values / scale})
        elif o.spec.log_scale:
            dims.append({"label": f"log10 {o.spec.axis_title}", "values": np.log10(values.clip(lower=1e-12))})
        else:
            dims.append({"label": o.spec.axis_title, "values": values})
    first = done[data.objectives[0].metric].astype(float)
    fig = go.Figure(
        go.Parcoords(line={"color": first, "colorscale": "Viridis", "showscale": True}, dimensions=dims)
    )
    fig.update_layout(title="Parallel coordinates of complete trials", height=460)
    return fig


def learning_curves_figure(data: ReportData) -> go.Figure:
    """Training loss over steps, one line per trial (the front's shown, the other complete trials a click away in
    the legend), with held-out loss at early stopping's rungs as markers of the same colour."""
    front = set(data.front["trial_id"].astype(str))
    methods = data.complete.set_index(data.complete["trial_id"].astype(str))["method"].astype(str).to_dict()
    colors = _colors(sorted(set(methods.values())))
    fig = go.Figure()
    for trial_id, curve in data.curves.items():
        method = methods.get(trial_id, "")
        shown = True if trial_id in front else "legendonly"
        name = f"{trial_id} ({method})"
        fig.add_trace(
            go.Scatter(
                x=curve["step"],
                y=curve["loss"],
                mode="lines",
                name=name,
                legendgroup=trial_id,
                meta=trial_id,
                visible=shown,
                line={"color": colors.get(method), "width": 2 if trial_id in front else 1},
            )
        )
        if curve.get("eval_step"):
            fig.add_trace(
                go.Scatter(
                    x=curve["eval_step"],
                    y=curve["eval_loss"],
                    mode="markers",
                    name=f"{name}: held-out loss at rungs",
                    legendgroup=trial_id,
                    meta=trial_id,
                    visible=shown,
                    showlegend=False,
                    marker={"color": colors.get(method), "symbol": "diamond", "size": 8},
                )
            )
    fig.update_layout(
        title="Learning curves: training loss by optimizer step (the front's trials; others in the legend)",
        xaxis_title="optimizer step",
        yaxis_title="training loss",
        height=420,
    )
    return fig


def how_to_read(chart_id: str, data: ReportData) -> str:
    """One line under a chart's title: what a mark is and which way is better."""
    if chart_id == "curves":
        return (
            "One line per trial: its training loss as the Trainer logged it (diamonds: held-out loss at early "
            "stopping's rungs). Click a name in the legend, or a trial's curve link in the table, to show it."
        )
    if chart_id == "importance":
        return (
            "Which sampled settings explain the differences in each objective (PED-ANOVA, on the complete trials): "
            "a long bar matters for that objective, a short one barely does."
        )
    if chart_id == "hypervolume":
        return (
            "The share of the final front's hypervolume the search had reached after each trial: a curve that "
            "flattens early means more trials would have added little."
        )
    if chart_id == "parallel":
        return (
            "One line per complete trial, across its settings and metrics: drag along an axis to keep only the "
            "trials in a range."
        )
    if chart_id == "three-objectives":
        return "Every complete trial in the search's three objectives at once: drag to turn it, hover for a trial."
    for pair in data.fronts_2d:
        if chart_id == f"pareto-{pair.x.metric}":
            y, x = get_metric(pair.y.metric), get_metric(pair.x.metric)
            up = "up" if pair.y.mode == "max" else "down"
            side = "right" if pair.x.mode == "max" else "left"
            return (
                f"Each point is a trial; the line joins the front, the trials no other beats on both {y.label} "
                f"and {x.label}. Better is {up} and to the {side}; hover for a trial's config."
            )
    return ""


def figures(data: ReportData) -> list[tuple[str, go.Figure]]:
    """Every chart of the report, with its section id: a front per other objective, the 3-D view for three
    objectives, search progress, parallel coordinates, learning curves (when trials recorded them)."""
    hover = hover_texts(data.complete, data.objectives)
    out = [(f"pareto-{pair.x.metric}", pareto_scatter(data, pair, hover)) for pair in data.fronts_2d]
    if len(data.objectives) == 3:
        out.append(("three-objectives", scatter_3d(data, hover)))
    out.append(("hypervolume", hypervolume_figure(data)))
    out.append(("parallel", parallel_coordinates(data)))
    if data.curves:
        out.append(("curves", learning_curves_figure(data)))
    return out
