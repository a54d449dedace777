"""What the sampler is told about a config that cannot run.

Optuna's samplers ignore FAILED trials, so a config that fails because of what it *is* (PEFT refuses it for this
model, it breaks a budget) would be proposed again and again. Instead such a trial completes with the worst value
of every metric an objective may name (``Metric.worst``), so every feasible trial dominates it: TPE files the
region under "bad" and moves away. Its status travels explicitly (``STATUS_KEY``), so the results table records it
as ``infeasible`` with its reason and reports keep it off the fronts; the values exist for the sampler only.
"""

from __future__ import annotations

from typing import Any

from peft_search.search.results.metrics import WORST_COST, metrics
from peft_search.search.results.records import ERROR_KEY, STATUS_KEY

__all__ = ["WORST_COST", "penalty_result"]


def penalty_result(message: str) -> dict[str, Any]:
    """The result an infeasible trial reports: its status and reason, and the worst value of every objective."""
    return {
        STATUS_KEY: "infeasible",
        ERROR_KEY: message,
        **{m.name: m.worst for m in metrics() if m.objective},
    }
