"""Everything the report shows, computed once from a results directory; the charts and the page only draw it.

Optuna's ``visualization/_pareto_front.py`` keeps the front's data apart from its figure the same way: this is
pure (pandas and numpy), tested without plotly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from peft_search.reports.fronts import (
    as_minimization,
    completed,
    hypervolume_history,
    method_summary,
    reference_point,
)
from peft_search.search.results.layout import ResultsDir
from peft_search.search.results.metrics import Objective
from peft_search.search.results.noise import pairwise_p
from peft_search.search.results.pareto import pareto_mask
from peft_search.search.results.repeats import fold_repeats


@dataclass(frozen=True)
class Front2D:
    """The first objective (drawn as y) against one other (x), and the trials non-dominated on those two."""

    y: Objective
    x: Objective
    front: pd.DataFrame
    """Sorted by x, so joining the points draws the front's staircase."""


@dataclass(frozen=True)
class ReportData:
    """What a report draws. Every frame is a slice of ``trials``, with its columns."""

    trials: pd.DataFrame
    objectives: tuple[Objective, ...]
    complete: pd.DataFrame
    """Complete trials with a finite value of every objective: the only ones on a front, a chart or the picker."""
    front: pd.DataFrame
    """Non-dominated over all objectives, best first by the first objective."""
    fronts_2d: tuple[Front2D, ...]
    reference: np.ndarray
    """The hypervolume's reference point, in minimisation form (maximised objectives negated)."""
    history: pd.DataFrame
    """Hypervolume over the first k complete trials: columns ``completed_trials``, ``hypervolume``."""
    methods: pd.DataFrame
    """``reports.fronts.method_summary``."""
    pvalues: dict[str, dict[str, float]] = field(default_factory=dict)
    """Paired test (``search.results.noise``) between every two complete trials with per-row held-out predictions."""
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """Trial id -> its learning curve (``CURVE_KEY``), for the complete trials that recorded one, front first."""


def report_data(
    trials: pd.DataFrame,
    objectives: tuple[Objective, ...],
    correct: Mapping[str, Sequence[bool]] | None = None,
) -> ReportData:
    """Compute every front, the reference point, the hypervolume history, the per-method summary and the paired
    tests between complete trials (``correct``: per-row correctness by trial id) once."""
    done = completed(trials, objectives)
    points = as_minimization(done, objectives)
    front = done[pareto_mask(points)] if len(done) else done
    first = objectives[0]
    fronts_2d = []
    for i, other in enumerate(objectives[1:], start=1):
        on_front = done[pareto_mask(points[:, [0, i]])] if len(done) else done
        fronts_2d.append(Front2D(first, other, on_front.sort_values(other.metric, kind="stable")))
    reference = reference_point(points, objectives)
    return ReportData(
        trials=trials,
        objectives=objectives,
        complete=done,
        front=front.sort_values(first.metric, ascending=first.mode == "min", kind="stable"),
        fronts_2d=tuple(fronts_2d),
        reference=reference,
        history=hypervolume_history(points, reference),
        methods=method_summary(trials, done, objectives),
        pvalues=pairwise_p(correct or {}, done["trial_id"].astype(str)) if len(done) else {},
        curves=learning_curves(pd.concat([front, done]).drop_duplicates("trial_id")),
    )


def learning_curves(trials: pd.DataFrame) -> dict[str, dict[str, list[float]]]:
    """Trial id -> learning curve, in the rows' order, for the rows that recorded one (``learning_curve``)."""
    if "learning_curve" not in trials:
        return {}
    out = {}
    for trial_id, text in zip(trials["trial_id"].astype(str), trials["learning_curve"], strict=True):
        if isinstance(text, str) and text:
            curve = json.loads(text)
            if curve.get("step"):
                out[trial_id] = curve
    return out


def load_report_data(search_dir: str | Path) -> ReportData:
    """The data of a results directory's report, for the search's own objectives."""
    results = ResultsDir(search_dir)
    return report_data(fold_repeats(results.read_trials()), results.objectives(), results.correct_by_trial())
