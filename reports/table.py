"""The trials table of a results directory: its plain-text summary for the terminal, and its records as JSON.

Columns come from the metric registry: the search's objectives, then the metrics marked ``summary``, each shown
by ``Metric.format``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from peft_search.reports.choice import rank
from peft_search.reports.fronts import completed
from peft_search.search.results.layout import ResultsDir
from peft_search.search.results.metrics import DEFAULT_OBJECTIVES, Objective, get_metric, metrics
from peft_search.search.results.records import TrialResult
from peft_search.search.results.repeats import fold_repeats

__all__ = ["estimate_error", "load_trials", "summary_table", "trial_records"]

_MEMORY, _ESTIMATE, _KIND = "peak_memory_bytes", "est_peak_memory_bytes", "peak_memory_kind"
_KIND_MARKS = {
    "cpu_rss": ("R", "peak resident memory of the CPU worker"),
    "gpu_allocated": ("G", "GPU allocator peak"),
}
_CONFIG_KEYS = (
    "r",
    "init_r",
    "num_virtual_tokens",
    "target_modules",
    "use_dora",
    "use_rslora",
    "layers_to_transform",
)


def load_trials(search_dir: str | Path) -> pd.DataFrame:
    """One row per trial, at the current schema, carrying the search's objectives in ``attrs["objectives"]`` (so
    ``summary_table`` of it follows them)."""
    results = ResultsDir(search_dir)
    trials = fold_repeats(results.read_trials())
    trials.attrs["objectives"] = results.objectives()
    return trials


def estimate_error(row) -> float | None:
    """Relative error of the planned peak memory against the measured one (positive: over-estimate)."""
    est, measured = row.get(_ESTIMATE), row.get(_MEMORY)
    if est is None or measured is None or pd.isna(est) or pd.isna(measured) or not measured:
        return None
    return float(est) / float(measured) - 1.0


def _brief(row) -> str:
    """What a complete trial's config is in a few words; for any other trial, its error or note."""
    if row.get("status") != "complete":
        return str(row.get("error") or "")
    cfg = json.loads(row["peft_config"]) if isinstance(row.get("peft_config"), str) else {}
    return ", ".join(f"{k}={v}" for k, v in cfg.items() if k in _CONFIG_KEYS)


def _ordered(trials: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """Complete trials ranked as ``best`` ranks them, then every other trial in table order."""
    done = completed(trials, objectives)
    return pd.concat([rank(done, objectives), trials.drop(done.index)])


def summary_table(trials: pd.DataFrame, objectives: Sequence[Objective] | None = None) -> str:
    """Fixed-width table of trials, best first, failures last with their error.

    ``objectives`` default to those ``load_trials`` attached, else the default objectives.
    """
    if trials.empty:
        return "(no trials)"
    objectives = tuple(objectives or trials.attrs.get("objectives") or DEFAULT_OBJECTIVES)
    names = [o.metric for o in objectives]
    names += [m.name for m in metrics() if m.summary and m.name not in names]
    names = [n for n in names if n in trials]
    repeated = "runs" in trials and bool((trials["runs"].fillna(1) > 1).any())
    packed = "group" in trials and bool(trials["group"].notna().any())  # search.packing
    rows = []
    for _, row in _ordered(trials, objectives).iterrows():
        cells = [
            str(row["trial_id"]),
            str(row["status"]),
            str(row.get("method")),
            str(row.get("quantization")),
        ]
        for name in names:
            text = get_metric(name).format(row.get(name)) + _half_width(row, name)
            mark = _KIND_MARKS.get(row.get(_KIND), ("",))[0] if name == _MEMORY and text != "-" else ""
            cells.append(f"{text} {mark}".rstrip())
        error = estimate_error(row)
        cells.append("-" if error is None else format(error, "+.0%"))
        if repeated:
            runs = row.get("runs")
            cells.append(str(int(runs)) if pd.notna(runs) else "-")
        if packed:
            cells.append(str(row["group"]) if pd.notna(row.get("group")) else "-")
        rows.append((cells, _brief(row)))
    header = ["trial", "status", "method", "quant", *(get_metric(n).label for n in names), "est err"]
    if repeated:
        header.append("runs")
    if packed:
        header.append("group")
    widths = [max(len(header[i]), *(len(c[i]) for c, _ in rows)) for i in range(len(header))]
    left = 4  # trial, status, method, quant: text, left-aligned; numbers right-aligned

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    head = line(header) + "  config"
    lines = [head, "-" * len(head), *(f"{line(c)}  {brief}".rstrip() for c, brief in rows)]
    kinds = sorted(set(trials.get(_KIND, pd.Series(dtype=object)).dropna()))
    if kinds and _MEMORY in names:
        marks = [f"{_KIND_MARKS[k][0]} = {_KIND_MARKS[k][1]}" if k in _KIND_MARKS else k for k in kinds]
        lines.append(f"{get_metric(_MEMORY).label}: " + "; ".join(marks))
    return "\n".join(lines)


def _half_width(row, name: str) -> str:
    """`` ±0.036``: half the width of the metric's 95 % interval, when it has one."""
    bounds = get_metric(name).interval
    if not bounds or not all(b in row and pd.notna(row.get(b)) for b in bounds):
        return ""
    return f" ±{(float(row[bounds[1]]) - float(row[bounds[0]])) / 2:.3f}"


def trial_records(trials: pd.DataFrame) -> list[dict[str, Any]]:
    """Each row as its typed record (``TrialResult``), JSON-ready: metrics keyed by the registry's names."""
    return [record_json(row) for row in trials.to_dict("records")]


def record_json(row: dict[str, Any]) -> dict[str, Any]:
    return dataclasses.asdict(TrialResult.from_row(dict(row)))
