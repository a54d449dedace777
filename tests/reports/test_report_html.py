"""The HTML report as data: escaping, size and speed at 500 trials, and a running search's partial results."""

from __future__ import annotations

import json
import time

import pandas as pd

from peft_search.reports.html import build_report, write_report
from tests.helpers import EVIL, synthetic_search


def test_500_trials_in_under_10_seconds_and_15_mb(tmp_path):
    search_dir = synthetic_search(tmp_path, 500)
    start = time.perf_counter()
    path = write_report(search_dir)
    elapsed = time.perf_counter() - start
    size = path.stat().st_size
    assert elapsed < 10, f"{elapsed:.1f}s"
    assert size < 15 * 2**20, f"{size / 2**20:.1f} MiB"
    page = path.read_text()
    assert page.count('<tr class="status-') == 500


def test_every_string_is_escaped(tmp_path):
    page = build_report(synthetic_search(tmp_path, 30, evil=True))
    assert EVIL not in page
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in page


def test_plotly_is_embedded_once_and_nothing_is_fetched(tmp_path):
    from plotly.offline import get_plotlyjs

    page = build_report(synthetic_search(tmp_path, 20))
    bundle_head = get_plotlyjs()[:400]
    assert page.count(bundle_head) == 1
    assert 'src="http' not in page  # no external scripts; the browser test watches for requests


def test_report_of_a_search_with_no_complete_trial(tmp_path):
    search_dir = synthetic_search(tmp_path, 5)
    trials = pd.read_parquet(search_dir / "trials.parquet").assign(status="running")
    trials.to_parquet(search_dir / "trials.parquet")
    page = build_report(search_dir)
    assert page.count('<tr class="status-running">') == 5


def test_importance_figure_names_its_trial_count():
    from peft_search.reports.charts import importance_figure

    fig = importance_figure({"accuracy": {"learning_rate": 0.7, "method": 0.3}}, n_trials=6)
    title = fig.layout.title.text  # says what it measures, over how many trials
    assert "than in all 6 sampled trials" in title and "PED-ANOVA" in title
    assert list(fig.data[0].y) == ["learning_rate", "method"] and list(fig.data[0].x) == [0.7, 0.3]


def test_an_old_tables_stopped_trials_read_as_stopped_early(tmp_path):
    """Tables written before the schema version called early-stopped trials "stopped": the page shows them as
    ``stopped_early``, off the fronts, and counts the training steps they saved."""
    search_dir = synthetic_search(tmp_path, 20)
    trials = pd.read_parquet(search_dir / "trials.parquet")
    trials.loc[1, ["status", "stopped_at_step", "error"]] = ["stopped", 10, "stopped early at step 10"]
    trials.to_parquet(search_dir / "trials.parquet")
    facts = json.loads((search_dir / "run.json").read_text())
    facts.update(early_stopping={"rule": "asha", "rungs": [10], "reduction_factor": 3}, train_steps=40)
    (search_dir / "run.json").write_text(json.dumps(facts))
    page = build_report(search_dir)
    assert page.count('<tr class="status-stopped_early">') == 1 and 'status-stopped"' not in page
    assert "1 stopped early, 0.8 trials&#x27; worth of training steps saved" in page
    assert "t0001" not in page.split('id="picker-data">')[1].split("</script>")[0]


def test_early_stopping_says_what_its_rungs_rank_on():
    from peft_search.reports.html import _early_stopping_fact

    es = {"rule": "asha", "rungs": [10], "reduction_factor": 3}
    trials = pd.DataFrame({"status": ["complete"], "stopped_at_step": [None]})
    assert (
        _early_stopping_fact({"early_stopping": es}, trials)
        == "asha (rungs at steps [10], reduction factor 3)"
    )
    ranked = _early_stopping_fact({"early_stopping": {**es, "objectives": ["accuracy"]}}, trials)
    assert ranked == "asha (rungs at steps [10], reduction factor 3, ranked on accuracy)"


def test_hardware_reads_in_words():
    from peft_search.reports.html import hardware_text

    resources = {"CPU": 2.0, "memory": 23035963264.0, "object_store_memory": 1e9, "node:10.0.0.1": 1.0}
    assert hardware_text(resources) == "2 CPUs, 21.5GiB memory"
    gpu = {"CPU": 16.0, "GPU": 1.0, "accelerator_type:H100": 1.0}
    assert hardware_text(gpu) == "16 CPUs, 1 GPU, H100"
    assert hardware_text({}) == "-"


def test_every_chart_says_how_to_read_it(tmp_path):
    import re

    page = build_report(synthetic_search(tmp_path, 40))
    sections = re.findall(r'<section class="chart" id="([^"]+)"><p class="how-to-read">([^<]*)</p>', page)
    ids = [cid for cid, _ in sections]
    assert {
        "pareto-trainable_params",
        "pareto-peak_memory_bytes",
        "three-objectives",
        "hypervolume",
        "parallel",
    } <= set(ids)
    assert page.count('<section class="chart"') == len(sections) and all(text.strip() for _, text in sections)
    reading = dict(sections)
    # accuracy (max) up, trainable parameters (min) left: the direction follows each objective's mode.
    assert "Better is up and to the left" in reading["pareto-trainable_params"]
