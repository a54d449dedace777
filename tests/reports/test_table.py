"""The terminal summary of a results table: ordering, failures with their errors, missing values."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from reports import load_trials, summary_table


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
    assert "r=8" in lines[3] and "2.0GBR" in lines[3] and "+10%" in lines[3]
    assert lines[-1].startswith("peak mem: R = peak resident memory")


def test_empty_and_missing(tmp_path):
    assert summary_table(pd.DataFrame()) == "(no trials)"
    with pytest.raises(FileNotFoundError, match="results directory"):
        load_trials(tmp_path)
