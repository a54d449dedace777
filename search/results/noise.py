"""How sure a comparison of two trials is: every complete trial is scored on the same held-out rows, so two trials
compare row by row with the exact McNemar test (statsmodels), and an accuracy gets its Wilson interval.

Pure (numpy, scipy, statsmodels); ``reports.choice`` turns it into a noise-aware pick and ``plan`` states the
resolvable difference.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

ALPHA = 0.05
"""Two trials differ when the paired test's p-value is below this."""
TEST = "exact McNemar test"


def mcnemar_p(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided p-value of the exact McNemar test on paired per-row correctness (statsmodels).

    Only the discordant rows count: those one trial got right and the other wrong.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.shape != y.shape:
        raise ValueError(f"paired rows differ in number: {x.size} and {y.size}")
    table = [[int((x & y).sum()), int((x & ~y).sum())], [int((~x & y).sum()), int((~x & ~y).sum())]]
    return float(mcnemar(table, exact=True).pvalue)


def pairwise_p(correct: Mapping[str, Sequence[bool]], ids: Iterable[str]) -> dict[str, dict[str, float]]:
    """The p-value of every pair among ``ids`` that have per-row correctness (symmetric; the diagonal is 1)."""
    have = [str(i) for i in ids if str(i) in correct]
    out: dict[str, dict[str, float]] = {i: {i: 1.0} for i in have}
    for n, i in enumerate(have):
        for j in have[n + 1 :]:
            out[i][j] = out[j][i] = mcnemar_p(correct[i], correct[j])
    return out


def resolvable_difference(n_rows: int, accuracy: float = 0.85, alpha: float = ALPHA) -> float:
    """The smallest accuracy difference between two trials that ``n_rows`` held-out rows resolve at ``alpha``.

    Two independent accuracies near ``accuracy``: the difference's standard error is ``sqrt(2 p (1 - p) / n)``,
    and a difference is resolved beyond ``z_(1 - alpha/2)`` of them (paired rows resolve somewhat less when the
    trials agree on most rows, so this is the optimistic side).
    """
    from scipy.stats import norm

    p = min(max(accuracy, 1e-6), 1 - 1e-6)
    return float(norm.ppf(1 - alpha / 2) * np.sqrt(2 * p * (1 - p) / max(n_rows, 1)))
