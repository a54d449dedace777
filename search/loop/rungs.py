"""Successive-halving rungs over several objectives: where trials are evaluated part-way, and which stop there.

Pure: no Ray, no torch. ``search.loop.early_stopping`` wires the rule into Ray Tune; ``search.worker.training`` evaluates at
the rung steps. A one-metric ASHA (Tune's ``ASHAScheduler``) would rank on accuracy alone and stop exactly the cheap,
less accurate configs a Pareto front is made of (LN tuning or VeRA with 1/100 of LoRA's parameters). Here a trial
is ranked by non-dominated sorting of all objectives, as in MO-ASHA (Schmucker et al., 2021), and a trial on its
rung's front always goes on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from peft_search.search.results.pareto import pareto_ranks


def standard_error(value: float, rows: int | None) -> float:
    """The binomial standard error of a share (an accuracy) measured on ``rows`` held-out rows."""
    if not rows:
        return 0.0
    p = min(max(float(value), 0.0), 1.0)
    return math.sqrt(p * (1 - p) / rows)


def rung_steps(steps: int, grace_steps: int | None, reduction_factor: float) -> list[int]:
    """The rungs of a trial of ``steps`` training steps: grace, grace x rf, ... (below ``steps``, the full budget).

    With no ``grace_steps``, the one rung at ``steps / reduction_factor``.
    """
    grace = grace_steps if grace_steps is not None else max(1, round(steps / reduction_factor))
    rungs, at = [], float(grace)
    while round(at) < steps:
        if not rungs or round(at) > rungs[-1]:
            rungs.append(round(at))
        at *= reduction_factor
    return rungs


def should_stop(
    trial_id: str,
    recorded: Mapping[str, Sequence[float]],
    reduction_factor: float,
    noise: Mapping[str, Sequence[float]] | None = None,
    margin: float = 0.0,
) -> bool:
    """Whether ``trial_id`` stops at a rung whose trials (itself included) reached it with these objective vectors.

    Vectors are in minimisation form. The trial stops when it is dominated and at least ``ceil(n / rf)`` of the
    ``n`` trials lie in strictly better Pareto ranks: it is outside the best ``1 / rf`` of the rung. With
    ``noise`` (each trial's standard error per objective) and ``margin``, a trial dominates another on a noisy
    objective only by more than ``margin`` standard errors of the difference (``search.results.pareto``).
    """
    ids = list(recorded)
    se = None if noise is None else np.asarray([noise[i] for i in ids], dtype=float)
    ranks = pareto_ranks(np.asarray([recorded[i] for i in ids], dtype=float), se, margin)
    mine = ranks[ids.index(trial_id)]
    keep = math.ceil(len(ids) / reduction_factor)
    return bool(mine > 0 and int((ranks < mine).sum()) >= keep)
