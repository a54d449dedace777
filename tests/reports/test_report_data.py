"""The report's data is computed once and drawn many times: the data object, and charts that only draw."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from peft_search import reports, search
from peft_search.reports import charts
from peft_search.reports.data import report_data
from peft_search.reports.html import build_report, render
from peft_search.search.results.metrics import DEFAULT_OBJECTIVES
from tests.reports.builders import record


def _records():
    return [
        record("t0", accuracy=0.90, trainable_params=1000, peak_memory_bytes=3e9),
        record("t1", accuracy=0.80, trainable_params=100, peak_memory_bytes=2e9),
        record("t2", accuracy=0.70, trainable_params=500, peak_memory_bytes=1e9),  # front only on memory
        record("t3", accuracy=0.60, trainable_params=600, peak_memory_bytes=4e9),  # dominated everywhere
        record("t4", status="failed"),
        record("t5", status="stopped_early"),
    ]


def _trials() -> pd.DataFrame:
    return pd.DataFrame([r.to_row() for r in _records()])


def test_report_data_holds_every_front_the_reference_and_the_history():
    data = report_data(_trials(), DEFAULT_OBJECTIVES)
    assert data.complete["trial_id"].tolist() == ["t0", "t1", "t2", "t3"]
    assert data.front["trial_id"].tolist() == ["t0", "t1", "t2"]  # best accuracy first
    pairs = {f.x.metric: f.front["trial_id"].tolist() for f in data.fronts_2d}
    assert pairs == {"trainable_params": ["t1", "t0"], "peak_memory_bytes": ["t2", "t1", "t0"]}
    assert all(f.y.metric == "accuracy" for f in data.fronts_2d)
    assert data.reference.tolist() == pytest.approx([0.0, 1100.0, 4.4e9])
    assert len(data.history) == 4 and data.history["hypervolume"].is_monotonic_increasing
    assert data.methods.loc[0, "complete"] == 4 and data.methods.loc[0, "trials"] == 6


def test_report_data_of_no_complete_trial_is_empty_not_an_error():
    data = report_data(_trials().assign(status="failed"), DEFAULT_OBJECTIVES)
    assert data.complete.empty and data.front.empty and data.history.empty and data.methods.empty
    assert all(f.front.empty for f in data.fronts_2d) and data.reference.tolist() == [0.0, 1.0, 1.0]
    assert [cid for cid, _ in charts.figures(data)][:2] == [
        "pareto-trainable_params",
        "pareto-peak_memory_bytes",
    ]


def _counting(monkeypatch, module, name, calls):
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


def test_a_report_computes_its_data_once(write_search, monkeypatch):
    path = write_search(_records(), [(o.metric, o.mode) for o in DEFAULT_OBJECTIVES])
    calls: dict[str, int] = {}
    for name in ("completed", "as_minimization", "hypervolume_history", "reference_point", "method_summary"):
        _counting(monkeypatch, reports.data, name, calls)
    _counting(monkeypatch, reports.html, "report_data", calls)
    build_report(path)
    assert calls == {
        "report_data": 1,
        "completed": 1,
        "as_minimization": 1,
        "hypervolume_history": 1,
        "reference_point": 1,
        "method_summary": 1,
    }


def test_charts_and_page_only_draw_precomputed_data(monkeypatch):
    """Once the data exists, drawing the charts and the page never computes a front, a point or a volume."""
    data = report_data(_trials(), DEFAULT_OBJECTIVES)

    def forbidden(*args, **kwargs):
        raise AssertionError("computed while drawing")

    for module in (reports.fronts, reports.data):
        for name in ("completed", "as_minimization", "pareto_mask", "reference_point", "hypervolume_history"):
            monkeypatch.setattr(module, name, forbidden)
    for name in ("pareto_mask", "hypervolume", "pareto_ranks"):
        monkeypatch.setattr(search.results.pareto, name, forbidden)
    figures = dict(charts.figures(data))
    assert list(figures) == [
        "pareto-trainable_params",
        "pareto-peak_memory_bytes",
        "three-objectives",
        "hypervolume",
        "parallel",
    ]
    params = figures["pareto-trainable_params"]
    assert params.layout.xaxis.type == "log" and params.layout.xaxis.title.text == "trainable parameters"
    # Bytes are drawn in GiB or MiB (the larger unit the data reaches), accuracy as a percentage.
    assert figures["pareto-peak_memory_bytes"].layout.xaxis.title.text in (
        "peak memory (GiB)",
        "peak memory (MiB)",
    )
    assert figures["pareto-peak_memory_bytes"].layout.yaxis.title.text == "held-out accuracy (%)"
    scene = figures["three-objectives"].layout.scene
    assert (scene.xaxis.type, scene.zaxis.title.text) == ("log", "held-out accuracy (%)")
    hv = data.history["hypervolume"]
    assert list(figures["hypervolume"].data[0].y) == (hv / hv.iloc[-1]).tolist()  # a share of the final front
    assert charts.reference_caption(data) == (
        "reference point: held-out accuracy 0.0000, trainable parameters 1.1k, peak memory 4.1GiB"
    )
    page = render(data, {"name": "precomputed"})
    assert page.count('<tr class="status-') == 6 and "3 non-dominated trials" in page


def test_hover_text_reads_the_registry_and_is_escaped():
    trials = _trials()
    trials.loc[0, "method"] = "<b>lora</b>"
    data = report_data(trials, DEFAULT_OBJECTIVES)
    hover = charts.hover_texts(data.complete, data.objectives)
    first = hover.loc[data.complete.index[0]]
    assert "held-out accuracy 0.9000<br>trainable parameters 1.0k<br>peak memory 2.8GiB" in first
    assert "&lt;b&gt;lora&lt;/b&gt;" in first and "<b>" not in first
    assert np.array_equal(hover.index, data.complete.index)
