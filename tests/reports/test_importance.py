"""Parameter importance counts the Optuna trials the table says are complete, never a guess from their values."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest

from peft_search.reports.html import build_report
from peft_search.reports.importance import importances
from peft_search.search.results.layout import ResultsDir
from peft_search.search.results.metrics import DEFAULT_OBJECTIVES, WORST_COST
from tests.reports.builders import record

_OBJECTIVES = [(o.metric, o.mode) for o in DEFAULT_OBJECTIVES]


@pytest.fixture
def search_with_study(write_search):
    """Five complete sampled trials and one infeasible one (worst values in Optuna, as the sampler is told)."""
    rows = [
        ("lora", 1e-3, 0.9, 5000, 2e9),
        ("lora", 3e-3, 0.8, 4000, 2e9),
        ("ia3", 1e-4, 0.6, 100, 1e9),
        ("ia3", 1e-3, 0.7, 120, 1e9),
        ("vera", 5e-4, 0.65, 300, 1.5e9),
    ]
    records = [
        record(f"t{i}", method=m, accuracy=a, trainable_params=p, peak_memory_bytes=mem)
        for i, (m, _, a, p, mem) in enumerate(rows)
    ]
    path = write_search([*records, record("t5", status="infeasible", method="loha")], _OBJECTIVES)
    study = optuna.create_study(
        study_name="s",
        storage=ResultsDir(path).optuna_url,
        directions=["maximize", "minimize", "minimize"],
    )
    distributions = {
        "method": optuna.distributions.CategoricalDistribution(["lora", "ia3", "vera", "loha"]),
        "learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
    }
    for method, lr, acc, params, mem in [*rows, ("loha", 1e-2, 0.0, WORST_COST, WORST_COST)]:
        study.add_trial(
            optuna.trial.create_trial(
                params={"method": method, "learning_rate": lr},
                distributions=distributions,
                values=[acc, params, mem],
            )
        )
    return path


def test_importance_uses_the_tables_complete_trials_for_every_objective(search_with_study):
    results = ResultsDir(search_with_study)
    found = importances(results, results.read_trials(), results.objectives())
    assert found.note == "" and found.n_trials == 5  # the infeasible trial is left out
    assert set(found.values) == {"accuracy", "trainable_params", "peak_memory_bytes"}
    assert all(set(v) == {"method", "learning_rate"} for v in found.values.values())
    page = build_report(search_with_study)
    assert 'id="importance"' in page and "than in all 5 sampled trials" in page


def test_a_table_without_optuna_trial_numbers_says_importance_is_unavailable(search_with_study):
    results = ResultsDir(search_with_study)
    old = results.read_trials().assign(optuna_trial=None)
    found = importances(results, old, results.objectives())
    assert found.values == {} and "not available for this table" in found.note
    trials = pd.read_parquet(results.trials_path).drop(columns=["optuna_trial"])
    trials.to_parquet(results.trials_path)  # an old table: no schema version, no column
    assert "not available for this table" in build_report(search_with_study)


def test_too_few_complete_trials_is_a_note(search_with_study):
    results = ResultsDir(search_with_study)
    trials = results.read_trials()
    trials.loc[trials["trial_id"] != "t0", "status"] = "failed"
    found = importances(results, trials, results.objectives())
    assert found.values == {} and "needs at least 3 complete sampled trials (has 1)" in found.note
