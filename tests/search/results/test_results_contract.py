"""The results contract: the metric registry, the typed trial record, and the results directory's layout."""

from __future__ import annotations

import dataclasses
import re

import pandas as pd
import pytest

from peft_search.search.errors import ConfigError
from peft_search.search.results.layout import SCHEMA_KEY, SCHEMA_VERSION, ResultsDir
from peft_search.search.results.metrics import Metric, get_metric, metrics, objective_metrics, register_metric
from peft_search.search.results.records import INFO_FIELDS, TrialResult
from tests import ROOT
from tests.helpers import tiny_config
from tests.reports.builders import record

DOCS = ROOT / "docs" / "results.md"


def _record(trial_id: str, status: str, **metrics: float) -> TrialResult:
    # builders.record, with a failed trial's error as "why".
    return dataclasses.replace(
        record(trial_id, status, **metrics), error="" if status == "complete" else "why"
    )


def test_the_reference_page_describes_every_column_and_metric():
    page = DOCS.read_text()
    described = set(re.findall(r"^\| `([a-z_]+)` \|", page, flags=re.M))
    columns = set(_record("t0", "complete").to_row()) | set(INFO_FIELDS) | {m.name for m in metrics()}
    assert columns - described == set(), "describe these in docs/results.md"
    for status in ("complete", "failed", "infeasible", "stopped_early", "running"):
        assert f"| `{status}` |" in page
    # The metric rows state the registry's unit and direction.
    for m in metrics():
        row = re.search(rf"^\| `{m.name}` \| ([^|]+) \| (max|min) \| (yes|no) \|", page, flags=re.M)
        assert row, m.name
        assert row.group(1).strip().replace(" ", "_") == m.unit and row.group(2) == m.direction, m.name
        assert (row.group(3) == "yes") == m.objective, m.name


def test_records_round_trip_through_the_table_with_its_schema_version(tmp_path):
    import pyarrow.parquet as pq

    results = ResultsDir(tmp_path)
    written = [
        _record("t0", "complete", accuracy=0.9, trainable_params=1000.0),
        _record("t1", "stopped_early", accuracy=0.5),
        _record("t2", "infeasible"),
    ]
    results.write_trials(written)
    assert pq.read_schema(results.trials_path).metadata[SCHEMA_KEY] == str(SCHEMA_VERSION).encode()
    assert results.read_records() == written
    table = results.read_trials()
    assert list(table["status"]) == ["complete", "stopped_early", "infeasible"]
    assert list(table["optuna_trial"]) == [0, 1, 2] and table.loc[2, "error"] == "why"


def test_a_status_outside_the_list_is_refused():
    with pytest.raises(ValueError, match="status 'stopped' is not one of complete, failed"):
        TrialResult("t0", "stopped")


def test_a_table_from_before_the_schema_version_reads_as_the_current_one(tmp_path):
    # Schema 1: no version in the metadata, early-stopped trials were "stopped", no Optuna trial number.
    pd.DataFrame(
        [
            {"trial_id": "a", "status": "complete", "peft_config": "{}", "error": "", "accuracy": 0.8},
            {
                "trial_id": "b",
                "status": "stopped",
                "peft_config": "{}",
                "error": "stopped early",
                "accuracy": 0.4,
            },
        ]
    ).to_parquet(tmp_path / "trials.parquet", index=False)
    table = ResultsDir(tmp_path).read_trials()
    assert list(table["status"]) == ["complete", "stopped_early"]
    assert "optuna_trial" in table and table["optuna_trial"].isna().all()
    assert [r.status for r in ResultsDir(tmp_path).read_records()] == ["complete", "stopped_early"]


def test_a_metric_is_declared_once():
    with pytest.raises(ValueError, match="already registered"):
        register_metric(Metric("accuracy", "fraction", "max", "again", "again"))
    assert get_metric("peak_memory_bytes").format(812.4 * 2**20) == "812.4MiB"
    assert get_metric("trainable_params").format(1_234_567) == "1.2M"
    assert get_metric("accuracy").format(float("nan")) == "-"


def test_objectives_are_checked_against_the_registry(tiny_bert, classification_csv):
    with pytest.raises(
        ConfigError, match=r"^objectives\[0\]\.metric: unknown objective metric 'acc'; choose from"
    ):
        tiny_config(tiny_bert, classification_csv, objectives=[{"metric": "acc", "mode": "max"}])
    # Not every metric is an objective: the estimate is a plan, not an outcome.
    assert "est_peak_memory_bytes" not in objective_metrics()
    with pytest.raises(ConfigError, match="unknown objective metric 'est_peak_memory_bytes'"):
        tiny_config(tiny_bert, classification_csv, objectives=[{"metric": "est_peak_memory_bytes"}])
    # The mode defaults to the metric's own direction.
    cfg = tiny_config(
        tiny_bert, classification_csv, objectives=[{"metric": "eval_loss"}, {"metric": "accuracy"}]
    )
    assert [o.mode for o in cfg.objectives] == ["min", "max"]
