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


def pareto_ranks(points: np.ndarray) -> np.ndarray:
    """Non-dominated sorting: 0 for the front, 1 for the front of what is left, ... (all objectives minimised)."""
    ranks = np.full(len(points), -1)
    left = np.arange(len(points))
    rank = 0
    while left.size:
        front = pareto_mask(points[left])
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
