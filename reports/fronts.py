"""Pure computations over a trials table: Pareto fronts, hypervolume, per-method summaries, budget choices.

No drawing here (that is `reports.charts`); every function takes a DataFrame and returns data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

COMPLETE = "complete"


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str  # "max" or "min"


DEFAULT_OBJECTIVES = (
    Objective("accuracy", "max"),
    Objective("trainable_params", "min"),
    Objective("peak_memory_bytes", "min"),
)


def completed(trials: pd.DataFrame, objectives: Sequence[Objective] = DEFAULT_OBJECTIVES) -> pd.DataFrame:
    """Complete trials whose objectives are all finite numbers."""
    if trials.empty or "status" not in trials:
        return trials.iloc[0:0]
    done = trials[trials["status"] == COMPLETE]
    for o in objectives:
        if o.metric not in done:
            return done.iloc[0:0]
        done = done[pd.to_numeric(done[o.metric], errors="coerce").notna()]
        done = done[np.isfinite(pd.to_numeric(done[o.metric], errors="coerce").astype(float))]
    return done


def _as_minimization(trials: pd.DataFrame, objectives: Sequence[Objective]) -> np.ndarray:
    cols = [
        trials[o.metric].astype(float).to_numpy() * (-1.0 if o.mode == "max" else 1.0) for o in objectives
    ]
    return np.stack(cols, axis=1) if cols else np.empty((len(trials), 0))


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Non-dominated rows of ``points`` (all objectives minimised). Identical points are all kept."""
    n = len(points)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        dominated = np.all(points <= points[i], axis=1) & np.any(points < points[i], axis=1)
        mask[i] = not dominated.any()
    return mask


def pareto_front(trials: pd.DataFrame, objectives: Sequence[Objective] = DEFAULT_OBJECTIVES) -> pd.DataFrame:
    """The non-dominated complete trials for these objectives, sorted by the first objective (best first)."""
    done = completed(trials, objectives)
    if done.empty:
        return done
    front = done[pareto_mask(_as_minimization(done, objectives))]
    first = objectives[0]
    return front.sort_values(first.metric, ascending=first.mode == "min", kind="stable")


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume dominated by ``points`` (minimisation) and bounded by ``reference``.

    Recursive slicing over the last objective; exact for any dimension, fast for the 2-3 objectives used here.
    """
    pts = np.asarray(points, dtype=float)
    ref = np.asarray(reference, dtype=float)
    if pts.size == 0:
        return 0.0
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    if pts.shape[1] == 1:
        return float(ref[0] - pts[:, 0].min())
    pts = pts[pareto_mask(pts)]
    order = np.argsort(pts[:, -1])
    pts = pts[order]
    volume = 0.0
    for i in range(len(pts)):
        upper = pts[i + 1, -1] if i + 1 < len(pts) else ref[-1]
        depth = upper - pts[i, -1]
        if depth > 0:
            volume += depth * hypervolume(pts[: i + 1, :-1], ref[:-1])
    return float(volume)


def reference_point(trials: pd.DataFrame, objectives: Sequence[Objective] = DEFAULT_OBJECTIVES) -> np.ndarray:
    """The stated reference point, in minimisation form: accuracy 0, and for cost objectives 1.1 x the worst."""
    done = completed(trials, objectives)
    ref = []
    for o in objectives:
        if o.metric == "accuracy":
            ref.append(0.0)  # -accuracy <= 0: every trial above chance-free zero counts
        elif o.mode == "max":
            ref.append(-float(done[o.metric].min()) if not done.empty else 0.0)
        else:
            worst = float(done[o.metric].max()) if not done.empty else 1.0
            ref.append(worst * 1.1 if worst > 0 else 1.0)
    return np.array(ref)


def hypervolume_history(
    trials: pd.DataFrame,
    objectives: Sequence[Objective] = DEFAULT_OBJECTIVES,
    reference: np.ndarray | None = None,
) -> pd.DataFrame:
    """Hypervolume of the front over the first k completed trials, k = 1..n, in the order trials finished."""
    done = completed(trials, objectives)
    ref = reference_point(trials, objectives) if reference is None else reference
    points = _as_minimization(done, objectives)
    values = [hypervolume(points[: k + 1], ref) for k in range(len(points))]
    return pd.DataFrame({"completed_trials": np.arange(1, len(values) + 1), "hypervolume": values})


def method_summary(trials: pd.DataFrame, tolerance: float = 0.01) -> pd.DataFrame:
    """Per method: trials, best accuracy, and the cheapest config within ``tolerance`` of that best."""
    done = completed(trials, (Objective("accuracy", "max"),))
    rows = []
    for method, group in done.groupby("method") if not done.empty else []:
        best = float(group["accuracy"].max())
        near = group[group["accuracy"] >= best - tolerance]
        cheap = near.sort_values(
            ["trainable_params", "accuracy"], ascending=[True, False], kind="stable"
        ).iloc[0]
        rows.append(
            {
                "method": method,
                "trials": int((trials["method"] == method).sum()),
                "complete": len(group),
                "best_accuracy": best,
                "cheapest_trial": cheap["trial_id"],
                "cheapest_accuracy": float(cheap["accuracy"]),
                "cheapest_trainable_params": int(cheap["trainable_params"]),
            }
        )
    columns = [
        "method",
        "trials",
        "complete",
        "best_accuracy",
        "cheapest_trial",
        "cheapest_accuracy",
        "cheapest_trainable_params",
    ]
    return pd.DataFrame(rows, columns=columns).sort_values(
        "best_accuracy", ascending=False, ignore_index=True
    )


@dataclass(frozen=True)
class Choice:
    trial: pd.Series | None
    reason: str


def choose_best(
    trials: pd.DataFrame,
    *,
    max_params: float | None = None,
    max_memory: float | None = None,
    min_accuracy: float | None = None,
) -> Choice:
    """The most accurate complete trial within the limits; ties go to fewer trainable parameters, then less peak
    memory, then the earlier trial id. The same rule runs on the report page's budget picker."""
    done = completed(trials, (Objective("accuracy", "max"),))
    n_done = len(done)
    if max_params is not None:
        done = done[done["trainable_params"] <= max_params]
    if max_memory is not None:
        done = done[done["peak_memory_bytes"] <= max_memory]
    if min_accuracy is not None:
        done = done[done["accuracy"] >= min_accuracy]
    limits = (
        ", ".join(
            f"{name} {op} {value:,.4g}"
            for name, op, value in (
                ("trainable_params", "<=", max_params),
                ("peak_memory_bytes", "<=", max_memory),
                ("accuracy", ">=", min_accuracy),
            )
            if value is not None
        )
        or "no limits"
    )
    if done.empty:
        return Choice(None, f"no complete trial meets {limits} ({n_done} complete trials in all)")
    ranked = done.assign(
        _acc=-done["accuracy"].astype(float),
        _params=done["trainable_params"].astype(float),
        _mem=done["peak_memory_bytes"].astype(float),
    ).sort_values(["_acc", "_params", "_mem", "trial_id"], kind="stable")
    best = ranked.iloc[0]
    return Choice(
        best.drop(["_acc", "_params", "_mem"]),
        f"most accurate of {len(done)} complete trials meeting {limits} (of {n_done}); "
        "ties broken by fewer trainable parameters, then lower peak memory",
    )
