"""A metric registered in one place reaches every display: the terminal table, ``best``, and the report page."""

from __future__ import annotations

import json

import pytest

from peft_search.reports.data import load_report_data
from peft_search.reports.html import build_report
from peft_search.search.cli import main
from peft_search.search.results.metrics import Metric, register_metric, unregister_metric
from tests.reports.builders import figure_json, record


@pytest.fixture
def toy_score():
    metric = register_metric(
        Metric(
            "toy_score",
            "seconds",
            "max",
            "toy score",
            "a metric only this test knows",
            objective=True,
            summary=True,
        )
    )
    yield metric
    unregister_metric("toy_score")


@pytest.fixture
def toy_search(toy_score, write_search):
    # Accuracy alone would pick t1; the search optimises toy_score, which picks t2.
    records = [
        record("t0", accuracy=0.70, trainable_params=1000, peak_memory_bytes=2e9, toy_score=12.5),
        record("t1", accuracy=0.95, trainable_params=5000, peak_memory_bytes=3e9, toy_score=3.0),
        record("t2", accuracy=0.60, trainable_params=200, peak_memory_bytes=1e9, toy_score=41.0),
        record("t3", status="failed"),
    ]
    return write_search(records, [("toy_score", "max"), ("trainable_params", "min")])


def test_show_lists_the_toy_metric(toy_search, capsys):
    assert main(["show", str(toy_search)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "toy score" in lines[0] and lines[0].index("toy score") < lines[0].index("trainable parameters")
    assert lines[2].startswith("t2 ") and "41.0s" in lines[2]  # ranked by toy_score, formatted by its unit
    assert lines[5].startswith("t3 ") and "RuntimeError: boom" in lines[5]


def test_show_json_carries_the_toy_metric_by_name(toy_search, capsys):
    assert main(["show", str(toy_search), "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["trial_id"] for r in records] == ["t0", "t1", "t2", "t3"]
    assert records[2]["metrics"]["toy_score"] == 41.0 and records[2]["optuna_trial"] == 2
    assert records[2]["peft_config"] == {"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 8}
    assert records[3]["status"] == "failed" and records[3]["metrics"] == {}


def test_best_json_ranks_by_the_toy_metric(toy_search, capsys):
    assert main(["best", str(toy_search), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["objectives"] == [
        {"metric": "toy_score", "mode": "max"},
        {"metric": "trainable_params", "mode": "min"},
    ]
    assert out["pick"]["trial_id"] == "t2" and out["pick"]["metrics"]["toy_score"] == 41.0
    assert (
        out["rule"].startswith(
            "tolerance auto fell back to 0 (the first objective is toy_score): the highest toy score"
        )
        and out["limits"] == {}
    )

    assert main(["best", str(toy_search), "--format", "json", "--limit", "toy_score<=20"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pick"]["trial_id"] == "t0" and out["limits"] == {"toy_score": {"max": 20.0}}


def test_report_shows_the_toy_metric(toy_search):
    page = build_report(toy_search)
    assert ">toy score</th>" in page  # a column of the trials table
    front = figure_json(page, "pareto-trainable_params")
    assert '"yaxis":{"title":{"text":"toy score (s)"}' in front
    assert 'id="min-toy_score"' in page and 'id="max-trainable_params"' in page
    data = load_report_data(toy_search)
    assert data.front["trial_id"].tolist() == ["t2"]
    assert data.methods.columns[4] == "best_toy_score"
