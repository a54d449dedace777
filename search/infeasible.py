"""What the sampler is told about a config that cannot run.

Optuna's samplers ignore FAILED trials, so a config that fails because of what it *is* (PEFT refuses it for this
model, it breaks a budget) would be proposed again and again. Instead such a trial completes with the worst
value of every metric an objective may name, so every feasible trial dominates it: TPE files the region under
"bad" and moves away. The results table still records the trial as ``infeasible`` with its reason, and reports
keep it off the fronts; the values below exist for the sampler only.
"""

from __future__ import annotations

from typing import Any

INFEASIBLE_KEY = "infeasible"
WORST_COST = 2.0**50
"""Stands for "no better than anything" on minimised metrics (parameters, bytes, seconds, loss)."""
_MAXIMISED = ("accuracy", "samples_per_s")
_MINIMISED = ("eval_loss", "trainable_params", "peak_memory_bytes", "adapter_bytes", "train_time_s")


def penalty_result(message: str) -> dict[str, Any]:
    """The result an infeasible trial reports: its reason, and the worst value of every objective metric."""
    return {
        INFEASIBLE_KEY: message,
        **{metric: 0.0 for metric in _MAXIMISED},
        **{metric: WORST_COST for metric in _MINIMISED},
    }
