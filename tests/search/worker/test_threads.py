"""``resources.cpus_per_worker: auto`` (``search.worker.threads``): which shapes a node's cores are measured in, which
one a search takes, and a real measurement on Ray (tiny model) that is cached afterwards."""

from __future__ import annotations

import pytest

from peft_search.search.worker import threads
from tests.helpers import tiny_config


@pytest.mark.parametrize(
    ("cpus", "shapes"),
    [(1, [1]), (2, [2, 1]), (3, [3]), (6, [6, 3]), (16, [16, 8, 4, 2]), (64, [64, 32, 16, 8])],
)
def test_shapes_halve_the_threads_while_at_most_eight_trials_share_a_node(cpus, shapes):
    assert threads.thread_shapes(cpus) == shapes


@pytest.mark.parametrize(
    ("rows_per_s", "chosen"),
    [
        ({2: 31.1, 1: 39.8}, 1),  # this machine's figures: two trials of one thread train 1.28x the rows
        ({2: 31.1, 1: 32.0}, 2),  # under 5 % better: one trial on every core
        ({8: 10.0, 4: 12.0, 2: 12.1, 1: 20.0}, 4),  # stops at the first share that does not pay
        ({4: 10.0}, 4),
    ],
)
def test_a_smaller_share_is_taken_only_where_it_trains_five_percent_more_rows(rows_per_s, chosen):
    assert threads.choose_threads(rows_per_s) == chosen


def test_the_chosen_threads_replace_auto_in_the_settings(tiny_bert, classification_csv, tmp_path):
    from peft_search.search.settings.trial import TrialSettings

    cfg = tiny_config(
        tiny_bert, classification_csv, results_dir=str(tmp_path), resources={"cpus_per_worker": "auto"}
    )
    settings = threads.with_threads(TrialSettings(config=cfg, model_path=str(tiny_bert), steps=1), 3)
    assert settings.resources.cpus_per_worker == 3.0 and cfg.resources.cpus_per_worker == "auto"


@pytest.fixture
def prep(tiny_bert, classification_csv, tmp_path, monkeypatch):
    """The tiny search with ``cpus_per_worker: auto``, prepared, its measurements cached in this test's own folder."""
    from peft_search.search.loop.prepare import prepare

    monkeypatch.setenv("PEFT_SEARCH_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config(
        tiny_bert, classification_csv, results_dir=str(tmp_path), resources={"cpus_per_worker": "auto"}
    )
    prep = prepare(cfg)
    return prep


@pytest.mark.slow
def test_auto_measures_each_shape_on_ray_then_reads_the_cache(ray_local, prep, capsys):
    first = threads.decide_threads(prep.settings, prep.data, 2, "this-node")
    again = threads.decide_threads(prep.settings, prep.data, 2, "this-node")
    assert first.resources.cpus_per_worker == again.resources.cpus_per_worker in (1.0, 2.0)
    measuring, measured, cached = capsys.readouterr().out.strip().splitlines()
    assert (
        measuring.startswith("[peft-search] cpus_per_worker (auto): measuring")
        and "1 x 2, 2 x 1" in measuring
    )
    assert measured.startswith("[peft-search] cpus_per_worker (auto): ") and "measured in" in measured
    assert "1 x 2 threads" in measured and "2 x 1 threads" in measured
    assert cached.endswith("(cached)") and measured.split(": rows")[0] == cached.split(": rows")[0]


@pytest.mark.slow
def test_a_measurement_that_fails_trains_on_every_core_saying_why(ray_local, prep, tmp_path, capsys):
    import dataclasses

    broken = dataclasses.replace(prep.settings, model_path=str(tmp_path / "no-model-here"))
    decided = threads.decide_threads(broken, prep.data, 2, "this-node")
    assert decided.resources.cpus_per_worker == 2.0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("[peft-search] cpus_per_worker (auto): not measured (") and "all 2 cores" in line
