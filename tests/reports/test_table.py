"""The terminal summary of a results table: ordering, failures with their errors, missing values."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from peft_search.reports import load_trials, summary_table
from peft_search.search.results.metrics import Objective


def _rows():
    cfg = json.dumps({"peft_type": "LORA", "r": 8, "target_modules": ["query"]})
    return pd.DataFrame(
        [
            {
                "trial_id": "a",
                "status": "complete",
                "method": "lora",
                "quantization": "nf4",
                "accuracy": 0.5,
                "trainable_params": 1500.0,
                "peak_memory_bytes": 2e9,
                "est_peak_memory_bytes": 2.2e9,
                "peak_memory_kind": "cpu_rss",
                "train_time_s": 3.0,
                "peft_config": cfg,
                "error": "",
            },
            {
                "trial_id": "b",
                "status": "failed",
                "method": "ia3",
                "quantization": "none",
                "accuracy": float("nan"),
                "trainable_params": None,
                "peak_memory_bytes": None,
                "peak_memory_kind": None,
                "train_time_s": None,
                "peft_config": "{}",
                "error": "IndexError: index out of range",
            },
            {
                "trial_id": "c",
                "status": "complete",
                "method": "bitfit",
                "quantization": "none",
                "accuracy": 0.9,
                "trainable_params": 900.0,
                "peak_memory_bytes": 1e9,
                "peak_memory_kind": "cpu_rss",
                "train_time_s": 2.0,
                "peft_config": "{}",
                "error": "",
            },
        ]
    )


def test_best_first_failures_last_with_error():
    lines = summary_table(_rows()).splitlines()
    assert lines[2].startswith("c ") and lines[3].startswith("a ") and lines[4].startswith("b ")
    assert "IndexError: index out of range" in lines[4]
    assert "r=8" in lines[3] and "1.9GiB R" in lines[3] and "+10%" in lines[3]
    assert lines[-1].startswith("peak memory: R = peak resident memory")


def test_columns_are_the_objectives_then_summary_metrics_formatted_by_the_registry():
    header = summary_table(_rows()).splitlines()[0].split("  ")
    headings = [h.strip() for h in header if h.strip()]
    assert headings == [
        "trial",
        "status",
        "method",
        "quant",
        "held-out accuracy",
        "trainable parameters",
        "peak memory",
        "training time",
        "est err",
        "config",
    ]
    # Other objectives come first; summary metrics the table lacks are left out.
    objectives = (Objective("train_time_s", "min"), Objective("accuracy", "max"))
    lines = summary_table(_rows(), objectives).splitlines()
    assert lines[0].split()[4:6] == ["training", "time"]
    assert lines[2].startswith("c ") and "2.0s" in lines[2] and "0.9000" in lines[2]


def test_a_packed_search_shows_each_trials_group():
    rows = _rows().assign(group=["g0", None, None])
    lines = summary_table(rows).splitlines()
    assert lines[0].split()[-2:] == ["group", "config"]
    assert (
        lines[3].startswith("a ") and lines[3].split()[-3] == "g0"
    )  # before its config: r=8, target_modules=
    assert (
        lines[2].startswith("c ") and lines[2].split()[-1] == "-"
    )  # trained alone (no config brief: bitfit)
    assert "group" not in summary_table(_rows()).splitlines()[0]  # searches without packing: as before


def test_load_trials_upgrades_old_tables_and_carries_the_objectives(tmp_path):
    """A table written before the schema version: "stopped" reads as "stopped_early"; the search's objectives
    travel with the frame, so the summary follows them."""
    rows = _rows()
    rows.loc[2, "status"] = "stopped"
    rows.to_parquet(tmp_path / "trials.parquet")
    (tmp_path / "run.json").write_text(
        json.dumps({"objectives": [{"metric": "train_time_s", "mode": "min"}]})
    )
    trials = load_trials(tmp_path)
    assert trials.loc[2, "status"] == "stopped_early"
    assert trials.attrs["objectives"] == (Objective("train_time_s", "min"),)
    lines = summary_table(trials).splitlines()
    assert lines[0].split()[4:6] == ["training", "time"]
    assert [line.split()[:2] for line in lines[2:5]] == [
        ["a", "complete"],
        ["b", "failed"],
        ["c", "stopped_early"],
    ]


def test_empty_and_missing(tmp_path):
    assert summary_table(pd.DataFrame()) == "(no trials)"
    with pytest.raises(FileNotFoundError, match="results directory"):
        load_trials(tmp_path)
