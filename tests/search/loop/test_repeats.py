"""Seed repeats (``search.repeats``): the front's best configs trained again with new seeds, linked to their
original, and folded into one row per config (mean and t-interval over the runs) by every reader."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from scipy import stats

from peft_search.reports.table import load_trials, summary_table
from peft_search.search.cli import main
from peft_search.search.results.layout import ResultsDir
from peft_search.search.results.metrics import DEFAULT_OBJECTIVES
from peft_search.search.results.repeats import fold_repeats, to_repeat
from tests.reports.builders import record


def _rec(trial_id, accuracy, params, repeat_of=None, seed=None, status="complete"):
    return record(
        trial_id,
        status,
        repeat_of=repeat_of,
        seed=seed,
        **(
            {"accuracy": accuracy, "trainable_params": params, "peak_memory_bytes": 1e9}
            if status == "complete"
            else {}
        ),
    )


def test_the_front_best_configs_are_repeated_once_each_seed():
    records = [
        _rec("a", 0.90, 5000),
        _rec("b", 0.85, 100),
        _rec("c", 0.80, 6000),
        _rec("d", 0.5, 10, status="failed"),
    ]
    configs = to_repeat(records, DEFAULT_OBJECTIVES, top=2, seeds=2, base_seed=0)
    # c is dominated by a; of the front (a, b), a is the more accurate, then b.
    assert [(c["repeat_of"], c["seed"]) for c in configs] == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert configs[0]["peft_config"] == {"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 8}
    assert configs[0]["learning_rate"] == 1e-3
    # A resumed search does not run a repeat again.
    done = [*records, _rec("a1", 0.9, 5000, repeat_of="a", seed=1)]
    assert len(to_repeat(done, DEFAULT_OBJECTIVES, top=2, seeds=2, base_seed=0)) == 3


def test_readers_fold_the_runs_into_their_original():
    rows = [
        _rec("a", 0.90, 5000),
        _rec("a1", 0.86, 5000, "a", 1),
        _rec("a2", 0.88, 5000, "a", 2),
        _rec("b", 0.8, 9),
    ]
    trials = fold_repeats(pd.DataFrame([r.to_row() for r in rows]))
    a = trials.set_index("trial_id").loc["a"]
    runs = [0.90, 0.86, 0.88]
    half = stats.t.ppf(0.975, 2) * stats.sem(runs)
    assert a["accuracy"] == pytest.approx(0.88) and a["runs"] == 3
    assert a["accuracy_ci_low"] == pytest.approx(0.88 - half) and a["accuracy_ci_high"] == pytest.approx(
        0.88 + half
    )
    assert trials.set_index("trial_id").loc["a1", "accuracy"] == 0.86  # each run keeps its own values
    assert trials.set_index("trial_id").loc["b", "runs"] == 1


@pytest.mark.slow
def test_a_search_repeats_its_front_and_every_reader_shows_the_mean(
    ray_local, tiny_bert, classification_csv, tmp_path, capsys
):
    from peft_search.search.loop.driver import run_search
    from tests.helpers import lora_space, tiny_config

    cfg = tiny_config(
        tiny_bert,
        classification_csv,
        results_dir=str(tmp_path),
        space=lora_space(2, 8),
        search={"num_trials": 2, "max_concurrent": 1, "repeats": {"top": 1, "seeds": 2}},
        training={"max_steps": 2},
        resources={"cpus_per_worker": 1},
    )
    search_dir = run_search(cfg, echo=False)
    capsys.readouterr()  # Tune's own printout
    raw = ResultsDir(search_dir).read_trials()
    repeats = raw[raw["repeat_of"].notna()]
    assert len(raw) == 4 and len(repeats) == 2 and (repeats["status"] == "complete").all()
    assert sorted(repeats["seed"].astype(int)) == [1, 2] and repeats["optuna_trial"].isna().all()
    original = raw.set_index("trial_id").loc[repeats["repeat_of"].iloc[0]]
    assert (repeats["peft_config"] == original["peft_config"]).all()
    # Each repeat has its own held-out predictions, on the same rows.
    predictions = ResultsDir(search_dir).read_predictions()
    assert set(predictions["trial_id"]) == set(raw["trial_id"])
    # Folded: the original is its config's mean over 3 runs, in show, best and the report.
    folded = load_trials(search_dir).set_index("trial_id").loc[original.name]
    runs = [original["accuracy"], *repeats["accuracy"]]
    assert folded["runs"] == 3 and folded["accuracy"] == pytest.approx(sum(runs) / 3)
    assert "runs" in summary_table(load_trials(search_dir)).splitlines()[0]
    assert main(["best", str(search_dir), "--format", "json", "--tolerance", "0"]) == 0
    best = json.loads(capsys.readouterr().out)
    assert best["pick"]["trial_id"] in set(raw["trial_id"]) - set(repeats["trial_id"])
    page = (search_dir / "report.html").read_text()
    assert "top 1 x 2 seeds: 2 repeat runs" in page and "mean of 3 runs (seed repeats)" in page
