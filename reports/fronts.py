"""Pure computations over a trials table: complete trials, Pareto fronts, the reference point, hypervolume, and a
per-method summary, for any objectives the metric registry names.

No drawing here (that is ``reports.charts``). The report calls these once, through ``reports.data``; ``best``
and the benchmarks call them directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from peft_search.search.results.metrics import DEFAULT_OBJECTIVES, Objective
from peft_search.search.results.pareto import hypervolume, pareto_mask
from peft_search.spaces.registry import family_of

COMPLETE = "complete"

__all__ = [
    "COMPLETE",
    "as_minimization",
    "completed",
    "hypervolume",
    "hypervolume_history",
    "method_summary",
    "pareto_front",
    "pareto_mask",
    "reference_point",
    "within",
]


def completed(trials: pd.DataFrame, objectives: Sequence[Objective] = DEFAULT_OBJECTIVES) -> pd.DataFrame:
    """Complete trials whose objectives are all finite numbers: the only ones a front or ``best`` may hold. A seed
    repeat counts through its original (``search.results.repeats.fold_repeats``), never as a point of its own."""
    done = trials[trials["status"] == COMPLETE] if "status" in trials else trials.iloc[0:0]
    if "repeat_of" in done:
        done = done[done["repeat_of"].isna()]
    # A table where no trial completed may lack an objective's column: empty, with every objective's column.
    done = done.assign(**{o.metric: np.nan for o in objectives if o.metric not in done})
    for o in objectives:
        values = pd.to_numeric(done[o.metric], errors="coerce").astype(float)
        done = done[np.isfinite(values)]
    return done


def as_minimization(done: pd.DataFrame, objectives: Sequence[Objective]) -> np.ndarray:
    """One row per trial, one column per objective, maximised ones negated (``search.results.pareto``'s form)."""
    cols = [done[o.metric].astype(float).to_numpy() * (-1.0 if o.mode == "max" else 1.0) for o in objectives]
    return np.stack(cols, axis=1) if cols else np.empty((len(done), 0))


def pareto_front(trials: pd.DataFrame, objectives: Sequence[Objective] = DEFAULT_OBJECTIVES) -> pd.DataFrame:
    """The non-dominated complete trials for these objectives, sorted by the first objective (best first)."""
    done = completed(trials, objectives)
    if done.empty:
        return done
    front = done[pareto_mask(as_minimization(done, objectives))]
    first = objectives[0]
    return front.sort_values(first.metric, ascending=first.mode == "min", kind="stable")


def reference_point(points: np.ndarray, objectives: Sequence[Objective]) -> np.ndarray:
    """The stated reference point, in minimisation form, for the points of the complete trials.

    A maximised fraction (accuracy) counts from 0; another maximised metric from its worst observed value; a
    minimised one from 1.1 x its worst observed value, so the costliest trial still adds volume.
    """
    ref = []
    for i, o in enumerate(objectives):
        worst = float(points[:, i].max()) if len(points) else None
        if o.mode == "max":
            ref.append(0.0 if o.spec.unit == "fraction" or worst is None else worst)
        elif worst is None or worst == 0:
            ref.append(1.0)
        else:
            ref.append(worst + 0.1 * abs(worst))
    return np.array(ref)


def hypervolume_history(points: np.ndarray, reference: np.ndarray) -> pd.DataFrame:
    """Hypervolume of the front over the first k points, k = 1..n, in the order the trials finished."""
    values = [hypervolume(points[: k + 1], reference) for k in range(len(points))]
    return pd.DataFrame({"completed_trials": np.arange(1, len(values) + 1), "hypervolume": values})


def within(values: pd.Series, best: float, objective: Objective, tolerance: float) -> pd.Series:
    """Which values are within ``tolerance`` of the best: absolute for a fraction (one point of accuracy),
    relative to the best otherwise (a loss, a time)."""
    slack = tolerance if objective.spec.unit == "fraction" else tolerance * abs(best)
    return values >= best - slack if objective.mode == "max" else values <= best + slack


def method_summary(
    trials: pd.DataFrame, done: pd.DataFrame, objectives: Sequence[Objective], tolerance: float = 0.01
) -> pd.DataFrame:
    """Per method: trials, the best value of the first objective, and the trial best on the second objective
    within ``tolerance`` of that best (the cheapest config about as good). Columns carry the metrics' names."""
    first, second = objectives[0], objectives[1] if len(objectives) > 1 else objectives[0]
    columns = [
        "method",
        "family",
        "trials",
        "complete",
        f"best_{first.metric}",
        "cheapest_trial",
        f"cheapest_{first.metric}",
        f"cheapest_{second.metric}",
    ]
    rows = []
    for method, group in done.groupby("method") if not done.empty else []:
        values = group[first.metric].astype(float)
        best = float(values.max() if first.mode == "max" else values.min())
        near = group[within(values, best, first, tolerance)]
        cheap = near.sort_values(
            [second.metric, first.metric],
            ascending=[second.mode == "min", first.mode == "min"],
            kind="stable",
        ).iloc[0]
        rows.append(
            [
                method,
                family_of(str(method)),
                int((trials["method"] == method).sum()),
                len(group),
                best,
                cheap["trial_id"],
                float(cheap[first.metric]),
                float(cheap[second.metric]),
            ]
        )
    summary = pd.DataFrame(rows, columns=columns)
    return summary.sort_values(f"best_{first.metric}", ascending=first.mode == "min", ignore_index=True)
