"""Fronts, hypervolume, summaries and budget choices: pure functions, including ties, one trial, all failed, NaN."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from peft_search.reports.choice import Limit, choose_best, limits_json, parse_limit
from peft_search.reports.fronts import (
    as_minimization,
    completed,
    hypervolume,
    hypervolume_history,
    method_summary,
    pareto_front,
    pareto_mask,
    reference_point,
)
from peft_search.search.results.metrics import DEFAULT_OBJECTIVES, Objective


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
    points = as_minimization(completed(trials), DEFAULT_OBJECTIVES)
    ref = reference_point(points, DEFAULT_OBJECTIVES)
    assert ref.tolist() == pytest.approx([0.0, 330.0, 3.3e9])
    history = hypervolume_history(points, ref)
    assert history["hypervolume"].is_monotonic_increasing and history["hypervolume"].iloc[-1] > 0
    assert len(hypervolume_history(points[:1], ref)) == 1
    assert hypervolume_history(points[:0], ref).empty


def test_reference_point_follows_each_objectives_unit_and_mode():
    """A maximised fraction counts from 0, another maximised metric from its worst value, a minimised one from
    1.1 x its worst; with no complete trial, 0 for maximised and 1 for minimised."""
    objectives = (
        Objective("accuracy", "max"),
        Objective("samples_per_s", "max"),
        Objective("eval_loss", "min"),
    )
    trials = _trials(
        [
            {"accuracy": 0.5, "samples_per_s": 40.0, "eval_loss": 0.8},
            {"accuracy": 0.9, "samples_per_s": 10.0, "eval_loss": 2.0},
        ]
    )
    points = as_minimization(completed(trials, objectives), objectives)
    assert reference_point(points, objectives).tolist() == pytest.approx([0.0, -10.0, 2.2])
    assert reference_point(points[:0], objectives).tolist() == [0.0, 0.0, 1.0]


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
    summary = method_summary(trials, completed(trials), DEFAULT_OBJECTIVES).set_index("method")
    assert summary.loc["lora", "cheapest_trial"] == "t1" and summary.loc["lora", "best_accuracy"] == 0.90
    assert summary.loc["ia3", "trials"] == 2 and summary.loc["ia3", "complete"] == 1
    failed = trials.assign(status="failed")
    assert method_summary(failed, completed(failed), DEFAULT_OBJECTIVES).empty


def test_method_summary_of_minimised_objectives_is_relative():
    """For a loss, "about as good" is within 1 % of the method's best; the column names follow the metrics."""
    objectives = (Objective("eval_loss", "min"), Objective("train_time_s", "min"))
    trials = _trials(
        [
            {"eval_loss": 1.000, "train_time_s": 50.0},
            {"eval_loss": 1.005, "train_time_s": 20.0},  # within 1 %: cheaper
            {"eval_loss": 1.2, "train_time_s": 1.0},
        ]
    )
    summary = method_summary(trials, completed(trials, objectives), objectives)
    assert list(summary.columns)[:4] == ["method", "family", "trials", "complete"]
    assert list(summary.columns)[4:] == [
        "best_eval_loss",
        "cheapest_trial",
        "cheapest_eval_loss",
        "cheapest_train_time_s",
    ]
    assert summary.loc[0, "cheapest_trial"] == "t1" and summary.loc[0, "best_eval_loss"] == 1.0


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
    choice = choose_best(trials, limits=[Limit("peak_memory_bytes", "<=", 8e9)])
    assert choice.trial["trial_id"] == "t2" and "peak_memory_bytes <= 8e+09" in choice.reason
    assert "ties broken by fewer trainable parameters, then lower peak memory" in choice.reason
    assert choose_best(trials, limits=[Limit("trainable_params", "<=", 200)]).trial["trial_id"] == "t2"
    nothing = choose_best(trials, limits=[Limit("accuracy", ">=", 0.95)])
    assert nothing.trial is None and "no complete trial meets accuracy >= 0.95" in nothing.reason
    assert choose_best(trials.assign(status="failed")).trial is None


def test_choose_best_ranks_by_the_searchs_objectives():
    """The first objective decides, the others break ties in order, then the trial id."""
    objectives = (Objective("eval_loss", "min"), Objective("train_time_s", "min"))
    trials = _trials(
        [
            {"accuracy": 0.99, "eval_loss": 0.5, "train_time_s": 9.0},
            {"accuracy": 0.10, "eval_loss": 0.2, "train_time_s": 5.0},
            {"accuracy": 0.20, "eval_loss": 0.2, "train_time_s": 3.0},  # tie on loss: faster
            {"accuracy": 0.30, "eval_loss": 0.2, "train_time_s": 3.0},  # full tie: the earlier id wins
        ]
    )
    choice = choose_best(trials, objectives)
    assert choice.trial["trial_id"] == "t2"
    assert (
        choice.reason.startswith("tolerance 0: the lowest held-out loss; ties broken by lower training time")
        and "lower training time" in choice.reason
    )
    limited = choose_best(trials, objectives, [Limit("accuracy", ">=", 0.5)])
    assert limited.trial["trial_id"] == "t0"


def test_parse_limit_reads_sizes_for_bytes_and_names_the_fix():
    assert parse_limit("accuracy>=0.8") == Limit("accuracy", ">=", 0.8)
    assert parse_limit(" trainable_params <= 1e6 ") == Limit("trainable_params", "<=", 1e6)
    assert parse_limit("peak_memory_bytes<=8GB", parse_bytes=lambda s: 8 * 2**30) == Limit(
        "peak_memory_bytes", "<=", 8.0 * 2**30
    )
    with pytest.raises(ValueError, match="unknown metric 'acc'; choose from accuracy, "):
        parse_limit("acc>=0.8")
    with pytest.raises(ValueError, match="not METRIC<=VALUE or METRIC>=VALUE"):
        parse_limit("accuracy=0.8")
    with pytest.raises(ValueError, match="accuracy: cannot read 'high' as a fraction"):
        parse_limit("accuracy>=high")
    limits = [Limit("accuracy", ">=", 0.5), Limit("accuracy", ">=", 0.7), Limit("train_time_s", "<=", 30.0)]
    assert limits_json(limits) == {"accuracy": {"min": 0.7}, "train_time_s": {"max": 30.0}}
