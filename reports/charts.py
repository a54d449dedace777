"""Drawing: plotly figures built from the pure data in `reports.fronts`. No computation of fronts happens here."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from reports.fronts import Objective, completed, hypervolume_history, pareto_front

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
_LABELS = {
    "accuracy": "held-out accuracy",
    "trainable_params": "trainable parameters",
    "peak_memory_bytes": "peak memory (bytes)",
}


def _colors(methods: Sequence[str]) -> dict[str, str]:
    return {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(sorted(set(methods)))}


def _hover(df: pd.DataFrame) -> list[str]:
    """Full PEFT config and metrics per point. Plotly renders hover text as markup: escape it."""
    import html

    out = []
    for _, r in df.iterrows():
        cfg = json.dumps(json.loads(r["peft_config"]), indent=1) if isinstance(r["peft_config"], str) else ""
        text = (
            f"trial {r['trial_id']} · {r['method']} · {r['quantization']}\n"
            f"accuracy {r['accuracy']:.4f}\ntrainable {int(r['trainable_params']):,}\n"
            f"peak memory {float(r['peak_memory_bytes']) / 2**20:,.0f} MiB\nlr {float(r['learning_rate']):.3g}\n{cfg}"
        )
        out.append(html.escape(text).replace("\n", "<br>"))
    return out


def pareto_scatter(trials: pd.DataFrame, x: str, log_x: bool = False) -> go.Figure:
    """Accuracy against a cost: points coloured by method, marked by quantization; the front joined."""
    objectives = (Objective("accuracy", "max"), Objective(x, "min"))
    done = completed(trials, objectives)
    colors = _colors(done["method"]) if not done.empty else {}
    fig = go.Figure()
    for (method, quant), group in done.groupby(["method", "quantization"]):
        fig.add_trace(
            go.Scatter(
                x=group[x],
                y=group["accuracy"],
                mode="markers",
                name=f"{method} · {quant}",
                marker={
                    "color": colors[method],
                    "symbol": _SYMBOLS.get(quant, "circle"),
                    "size": 10,
                    "line": {"width": 1, "color": "#333"},
                },
                text=_hover(group),
                hovertemplate="%{text}<extra></extra>",
            )
        )
    front = pareto_front(trials, objectives)
    if not front.empty:
        ordered = front.sort_values(x)
        fig.add_trace(
            go.Scatter(
                x=ordered[x],
                y=ordered["accuracy"],
                mode="lines+markers",
                name="Pareto front",
                line={"color": "black", "dash": "dot", "shape": "hv"},
                marker={"size": 16, "color": "rgba(0,0,0,0)", "line": {"width": 2, "color": "black"}},
                hoverinfo="skip",
            )
        )
    fig.update_layout(
        title=f"Accuracy vs {_LABELS.get(x, x)}",
        xaxis_title=_LABELS.get(x, x),
        yaxis_title="held-out accuracy",
        xaxis_type="log" if log_x else "linear",
        legend_title="method · quantization",
        height=480,
    )
    return fig


def scatter_3d(trials: pd.DataFrame) -> go.Figure:
    done = completed(trials)
    colors = _colors(done["method"]) if not done.empty else {}
    front_ids = set(pareto_front(trials)["trial_id"]) if not done.empty else set()
    fig = go.Figure()
    for method, group in done.groupby("method"):
        fig.add_trace(
            go.Scatter3d(
                x=np.log10(group["trainable_params"].astype(float).clip(lower=1)),
                y=group["peak_memory_bytes"].astype(float) / 2**20,
                z=group["accuracy"],
                mode="markers",
                name=method,
                marker={
                    "color": colors[method],
                    "size": [9 if t in front_ids else 5 for t in group["trial_id"]],
                    "symbol": ["diamond" if t in front_ids else "circle" for t in group["trial_id"]],
                },
                text=_hover(group),
                hovertemplate="%{text}<extra></extra>",
            )
        )
    fig.update_layout(
        title="Three objectives (Pareto-optimal trials drawn as larger diamonds)",
        height=560,
        scene={
            "xaxis_title": "log10 trainable params",
            "yaxis_title": "peak memory (MiB)",
            "zaxis_title": "accuracy",
        },
    )
    return fig


def hypervolume_figure(trials: pd.DataFrame, reference: np.ndarray) -> go.Figure:
    history = hypervolume_history(trials, reference=reference)
    fig = go.Figure(
        go.Scatter(
            x=history["completed_trials"], y=history["hypervolume"], mode="lines+markers", name="hypervolume"
        )
    )
    ref = ", ".join(f"{v:.4g}" for v in reference)
    fig.update_layout(
        title="Search progress: hypervolume of the front",
        xaxis_title="completed trials",
        yaxis_title="hypervolume",
        height=380,
        annotations=[
            {
                "text": f"reference point (minimisation form: -accuracy, params, memory) = ({ref})",
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
        title=f"What mattered: parameter importance per objective (Optuna's default evaluator over {n_trials} "
        "sampled trials; few trials give noisy importances)",
        xaxis_title="importance",
        barmode="group",
        height=420,
    )
    return fig


def parallel_coordinates(trials: pd.DataFrame) -> go.Figure:
    done = completed(trials)
    methods = sorted(set(done["method"])) if not done.empty else []
    quants = [q for q in _SYMBOLS if not done.empty and q in set(done["quantization"])]
    dims = [
        {
            "label": "method",
            "values": [methods.index(m) for m in done["method"]],
            "tickvals": list(range(len(methods))),
            "ticktext": methods,
        },
        {
            "label": "quantization",
            "values": [quants.index(q) for q in done["quantization"]],
            "tickvals": list(range(len(quants))),
            "ticktext": quants,
        },
        {"label": "log10 learning rate", "values": np.log10(done["learning_rate"].astype(float))},
        {
            "label": "log10 trainable params",
            "values": np.log10(done["trainable_params"].astype(float).clip(lower=1)),
        },
        {"label": "peak memory (MiB)", "values": done["peak_memory_bytes"].astype(float) / 2**20},
        {"label": "accuracy", "values": done["accuracy"].astype(float)},
    ]
    fig = go.Figure(
        go.Parcoords(
            line={"color": done["accuracy"].astype(float), "colorscale": "Viridis", "showscale": True},
            dimensions=dims,
        )
    )
    fig.update_layout(title="Parallel coordinates of complete trials", height=460)
    return fig
