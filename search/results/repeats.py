"""Seed repeats in the trials table: which configs to train again, and each repeated config as one row.

``search.repeats`` trains the front's best configs again with new seeds as ordinary trials whose ``repeat_of``
names the original. Readers fold them: the original's row then holds every metric's mean over the config's
complete runs, ``runs`` their number, and for accuracy the 95 % t-interval of that mean (scipy) in place of the
one-run Wilson interval. The repeat rows stay in the table as they are, off the fronts. Pure: pandas and scipy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from peft_search.search.results.metrics import Objective, metrics
from peft_search.search.results.pareto import pareto_mask
from peft_search.search.results.records import REPEAT_OF_KEY, TrialResult

CONFIDENCE = 0.95


def to_repeat(
    records: Sequence[TrialResult], objectives: Sequence[Objective], top: int, seeds: int, base_seed: int
) -> list[dict]:
    """Tune configs of the repeats still to run: the ``top`` best configs of the front (by the objectives in
    order), each with seeds ``base_seed + 1 .. base_seed + seeds``; a repeat already in the table is not run again."""
    originals = [
        r
        for r in records
        if r.status == "complete" and r.repeat_of is None and all(o.metric in r.metrics for o in objectives)
    ]
    if not originals:
        return []
    signs = np.array([-1.0 if o.mode == "max" else 1.0 for o in objectives])
    points = np.array([[r.metrics[o.metric] for o in objectives] for r in originals]) * signs
    front = [r for r, keep in zip(originals, pareto_mask(points), strict=True) if keep]
    front.sort(
        key=lambda r: (
            tuple(r.metrics[o.metric] * s for o, s in zip(objectives, signs, strict=True)),
            r.trial_id,
        )
    )
    done = {(r.repeat_of, r.seed) for r in records if r.repeat_of is not None}
    configs = []
    for original in front[:top]:
        for k in range(1, seeds + 1):
            seed = base_seed + k
            if (original.trial_id, seed) in done:
                continue
            configs.append(run_again(original, seed))
    return configs


def run_again(original: TrialResult, seed: int, **marks: Any) -> dict:
    """The Tune config that trains ``original``'s config again with ``seed``, linked to it (``repeat_of``): a
    seed repeat, or with ``race_round`` a race's run; one builder for both."""
    return {
        "candidate": original.candidate,
        "method": original.method,
        "quantization": original.quantization,
        "peft_config": dict(original.peft_config),
        "learning_rate": original.learning_rate,
        "training": dict(original.training),
        "seed": seed,
        REPEAT_OF_KEY: original.trial_id,
        **marks,
    }


def fold_repeats(trials: pd.DataFrame) -> pd.DataFrame:
    """The table with each repeated config's original row holding the mean over its complete runs (see above)."""
    if trials.empty or REPEAT_OF_KEY not in trials or trials[REPEAT_OF_KEY].isna().all():
        return trials
    from scipy import stats

    out = trials.copy()
    out["runs"] = np.where(out["status"].eq("complete") & out[REPEAT_OF_KEY].isna(), 1, np.nan)
    names = [m.name for m in metrics() if m.name in out and not m.name.startswith("accuracy_ci_")]
    repeats = out[out[REPEAT_OF_KEY].notna() & out["status"].eq("complete")]
    for original, group in repeats.groupby(REPEAT_OF_KEY):
        at = out.index[(out["trial_id"] == original) & out["status"].eq("complete")]
        if len(at) == 0:
            continue
        runs = pd.concat([out.loc[at], group])
        for name in names:
            out.loc[at, name] = pd.to_numeric(runs[name], errors="coerce").mean()
        out.loc[at, "runs"] = len(runs)
        accuracy = pd.to_numeric(runs.get("accuracy"), errors="coerce").dropna()
        if len(accuracy) > 1:
            half = stats.t.ppf((1 + CONFIDENCE) / 2, len(accuracy) - 1) * stats.sem(accuracy)
            out.loc[at, "accuracy_ci_low"] = max(0.0, accuracy.mean() - half)
            out.loc[at, "accuracy_ci_high"] = min(1.0, accuracy.mean() + half)
    return out
