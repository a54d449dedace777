"""Fronts, hypervolume, summaries and budget choices: pure functions, including ties, one trial, all failed, NaN."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reports.fronts import (
    Objective,
    choose_best,
    hypervolume,
    hypervolume_history,
    method_summary,
    pareto_front,
    pareto_mask,
    reference_point,
)


def _trials(rows):
    base = {"status": "complete", "method": "lora", "peak_memory_bytes": 1e9}
    return pd.DataFrame([{**base, "trial_id": f"t{i}", **r} for i, r in enumerate(rows)])


def test_pareto_mask_keeps_ties_and_drops_dominated():
    pts = np.array([[1.0, 2.0], [2.0, 1.0], [1.0, 2.0], [2.0, 2.0], [3.0, 3.0]])
    assert pareto_mask(pts).tolist() == [True, True, True, False, False]


def test_front_of_accuracy_vs_params():
    trials = _trials(
        [
            {"accuracy": 0.9, "trainable_params": 1000},
            {"accuracy": 0.8, "trainable_params": 100},
            {"accuracy": 0.7, "trainable_params": 500},  # dominated by t1
            {"accuracy": float("nan"), "trainable_params": 10},  # NaN: never on the front
            {"accuracy": 0.95, "trainable_params": 5000, "status": "failed"},
        ]
    )
    objectives = (Objective("accuracy", "max"), Objective("trainable_params", "min"))
    assert pareto_front(trials, objectives)["trial_id"].tolist() == ["t0", "t1"]


def test_hypervolume_known_values():
    assert hypervolume(np.array([[1.0, 2.0], [2.0, 1.0]]), np.array([3.0, 3.0])) == pytest.approx(3.0)
    assert hypervolume(np.array([[0.0, 0.0, 0.0]]), np.array([1.0, 2.0, 3.0])) == pytest.approx(6.0)
    assert hypervolume(np.array([[5.0, 5.0]]), np.array([3.0, 3.0])) == 0.0
    assert hypervolume(np.empty((0, 2)), np.array([1.0, 1.0])) == 0.0


def test_hypervolume_matches_optuna_on_random_fronts():
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(0)
    for dims in (2, 3):
        pts = rng.random((30, dims))
        ref = np.ones(dims) * 1.1
        assert hypervolume(pts, ref) == pytest.approx(compute_hypervolume(pts, ref), rel=1e-9)


def test_hypervolume_history_is_non_decreasing_and_handles_single_and_empty():
    trials = _trials(
        [
            {"accuracy": 0.5, "trainable_params": 100, "peak_memory_bytes": 2e9},
            {"accuracy": 0.9, "trainable_params": 300, "peak_memory_bytes": 1e9},
            {"accuracy": 0.4, "trainable_params": 50, "peak_memory_bytes": 3e9},
        ]
    )
    history = hypervolume_history(trials)
    assert history["hypervolume"].is_monotonic_increasing and history["hypervolume"].iloc[-1] > 0
    ref = reference_point(trials)
    assert ref.tolist() == pytest.approx([0.0, 330.0, 3.3e9])
    assert len(hypervolume_history(trials.iloc[:1])) == 1
    assert hypervolume_history(trials.assign(status="failed")).empty


def test_method_summary_cheapest_within_one_point():
    trials = _trials(
        [
            {"method": "lora", "accuracy": 0.90, "trainable_params": 1000},
            {"method": "lora", "accuracy": 0.895, "trainable_params": 200},
            {"method": "lora", "accuracy": 0.85, "trainable_params": 10},
            {"method": "ia3", "accuracy": 0.80, "trainable_params": 50},
            {"method": "ia3", "accuracy": None, "trainable_params": None, "status": "failed"},
        ]
    )
    summary = method_summary(trials).set_index("method")
    assert summary.loc["lora", "cheapest_trial"] == "t1" and summary.loc["lora", "best_accuracy"] == 0.90
    assert summary.loc["ia3", "trials"] == 2 and summary.loc["ia3", "complete"] == 1
    assert method_summary(trials.assign(status="failed")).empty


def test_choose_best_limits_ties_and_nothing_fits():
    trials = _trials(
        [
            {"accuracy": 0.9, "trainable_params": 1000, "peak_memory_bytes": 9e9},
            {"accuracy": 0.8, "trainable_params": 300, "peak_memory_bytes": 2e9},
            {
                "accuracy": 0.8,
                "trainable_params": 100,
                "peak_memory_bytes": 3e9,
            },  # tie on accuracy: fewer params
            {"accuracy": 0.99, "trainable_params": 10, "peak_memory_bytes": 1e9, "status": "infeasible"},
        ]
    )
    assert choose_best(trials).trial["trial_id"] == "t0"
    choice = choose_best(trials, max_memory=8e9)
    assert choice.trial["trial_id"] == "t2" and "peak_memory_bytes <= 8e+09" in choice.reason
    assert choose_best(trials, max_params=200).trial["trial_id"] == "t2"
    nothing = choose_best(trials, min_accuracy=0.95)
    assert nothing.trial is None and "no complete trial meets accuracy >= 0.95" in nothing.reason
    assert choose_best(trials.assign(status="failed")).trial is None
