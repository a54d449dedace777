"""The report follows the search's own objectives: a loss-and-time search draws loss against time, nothing else."""

from __future__ import annotations

import pytest

from peft_search.reports import charts
from peft_search.reports.data import load_report_data
from peft_search.reports.html import build_report
from tests.reports.builders import figure_json, record


@pytest.fixture
def loss_and_time(write_search):
    records = [
        record(
            f"t{i}",
            method=m,
            accuracy=a,
            eval_loss=loss,
            train_time_s=s,
            trainable_params=p,
            peak_memory_bytes=2e9,
        )
        for i, (m, a, loss, s, p) in enumerate(
            [
                ("lora", 0.9, 0.40, 60.0, 5000),
                ("lora", 0.8, 0.55, 20.0, 800),
                ("ia3", 0.7, 0.90, 8.0, 100),
                ("ia3", 0.6, 0.95, 30.0, 90),  # dominated by t2 on loss and time
            ]
        )
    ]
    return write_search(
        records + [record("t4", status="infeasible")], [("eval_loss", "min"), ("train_time_s", "min")]
    )


def _titles(fig) -> list[str]:
    layout = fig.layout
    axes = [layout.xaxis, layout.yaxis, layout.scene.xaxis, layout.scene.yaxis, layout.scene.zaxis]
    return [str(layout.title.text), *(str(a.title.text) for a in axes if a.title.text)]


def test_front_chart_is_loss_against_time_with_units(loss_and_time):
    data = load_report_data(loss_and_time)
    assert [(f.y.metric, f.x.metric) for f in data.fronts_2d] == [("eval_loss", "train_time_s")]
    assert data.fronts_2d[0].front["trial_id"].tolist() == ["t2", "t1", "t0"]  # sorted by time
    figures = dict(charts.figures(data))
    assert list(figures) == ["pareto-train_time_s", "hypervolume", "parallel"]  # no 3-D view for 2 objectives
    front = figures["pareto-train_time_s"]
    assert front.layout.xaxis.title.text == "training time (s)" and front.layout.xaxis.type == "linear"
    assert front.layout.yaxis.title.text == "held-out loss"
    assert front.layout.title.text == "Held-out loss vs training time"
    line = front.data[-1]
    assert (
        line.name == "Pareto front" and list(line.x) == [8.0, 20.0, 60.0] and list(line.y) == [0.9, 0.55, 0.4]
    )
    for fig in figures.values():
        assert not any("accuracy" in t or "trainable" in t for t in _titles(fig))
    dims = [d.label for d in figures["parallel"].data[0].dimensions]
    assert dims[-2:] == ["held-out loss", "training time (s)"]


def test_hypervolume_reference_is_stated_in_the_objectives_units(loss_and_time):
    data = load_report_data(loss_and_time)
    assert data.reference.tolist() == pytest.approx([0.95 * 1.1, 60.0 * 1.1])
    assert charts.reference_caption(data) == "reference point: held-out loss 1.045, training time 66.0s"
    assert data.history["hypervolume"].is_monotonic_increasing and len(data.history) == 4


def test_page_has_no_accuracy_or_params_chart_and_picks_by_loss(loss_and_time):
    page = build_report(loss_and_time)
    assert 'id="pareto-train_time_s"' in page and 'id="three-objectives"' not in page
    assert 'id="pareto-trainable_params"' not in page and 'id="pareto-peak_memory_bytes"' not in page
    assert '"title":{"text":"training time (s)"}' in figure_json(page, "pareto-train_time_s")
    assert (
        'id="max-eval_loss"' in page and 'id="max-train_time_s"' in page and 'id="min-accuracy"' not in page
    )
    assert "over held-out loss and training time" in page
    assert "lowest held-out loss; ties broken by lower training time" in page
