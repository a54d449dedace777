"""Pareto dominance over minimised objective vectors: the front, non-dominated sorting, hypervolume.

Pure numpy: the early-stopping rule ranks trials with it and the report draws its fronts from it.
"""

from __future__ import annotations

import numpy as np


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Non-dominated rows of ``points`` (all objectives minimised). Identical points are all kept."""
    n = len(points)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        dominated = np.all(points <= points[i], axis=1) & np.any(points < points[i], axis=1)
        mask[i] = not dominated.any()
    return mask


def dominance(points: np.ndarray, noise: np.ndarray | None = None, margin: float = 0.0) -> np.ndarray:
    """``D[i, j]``: row ``i`` dominates row ``j`` (all objectives minimised).

    With ``noise`` (a standard error per row and objective, 0 where a value is exact) and ``margin`` > 0, ``i``
    dominates ``j`` only where it is better on every noisy objective by more than ``margin`` standard errors of
    the difference (``sqrt(se_i^2 + se_j^2)``), no worse on every exact one, and strictly better on one: a tie
    within noise is no domination.
    """
    pts = np.asarray(points, dtype=float)
    le = np.all(pts[:, None, :] <= pts[None, :, :], axis=2)
    lt = np.any(pts[:, None, :] < pts[None, :, :], axis=2)
    if noise is None or margin <= 0:
        return le & lt
    se = np.asarray(noise, dtype=float)
    noisy = np.any(se > 0, axis=0)
    gap = pts[None, :, :] - pts[:, None, :]  # how much better i is than j, per objective
    threshold = margin * np.sqrt(se[:, None, :] ** 2 + se[None, :, :] ** 2)
    clear = np.all(np.where(noisy, gap > threshold, gap >= 0), axis=2)
    return clear & lt


def pareto_ranks(points: np.ndarray, noise: np.ndarray | None = None, margin: float = 0.0) -> np.ndarray:
    """Non-dominated sorting: 0 for the front, 1 for the front of what is left, ... (all objectives minimised;
    ``noise`` and ``margin`` as in ``dominance``)."""
    dominates = dominance(points, noise, margin)
    ranks = np.full(len(dominates), -1)
    left = np.arange(len(dominates))
    rank = 0
    while left.size:
        front = ~dominates[np.ix_(left, left)].any(axis=0)
        ranks[left[front]] = rank
        left = left[~front]
        rank += 1
    return ranks


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
