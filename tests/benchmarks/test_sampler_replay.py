"""The default sampler against random search, replayed on a small table of real runs (no training, seconds).

``tables/bbcnews-minilm-small.parquet`` is the first half of the real benchmark table (``python -m
benchmarks.build_table --export-only --work results/tables/bbcnews-minilm --chunks 2 --name bbcnews-minilm-small
--out-dir tests/benchmarks/tables``): MiniLM on BBC News, the
default space and training, each config trained once, with its per-row held-out predictions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from benchmarks.sampler_replay import Scorer, Table, replay, run, samplers

TABLE = Path(__file__).parent / "tables" / "bbcnews-minilm-small.parquet"


@pytest.fixture(scope="module")
def tab() -> Table:
    return Table.load(TABLE)


def test_a_stored_config_is_answered_by_its_own_row(tab):
    sampled = tab.rows[tab.rows["candidate"] == "sampled"]
    for i, row in sampled.iterrows():
        config = {"candidate": "sampled", "method": row["method"], "learning_rate": row["learning_rate"]}
        answer, distance = tab.answer(config, row["params"])
        assert (answer, distance) == (i, 0.0)
    for name in tab.rows.loc[tab.rows["candidate"] != "sampled", "candidate"]:
        answer, distance = tab.answer({"candidate": name}, {"candidate": name})
        assert tab.rows.loc[answer, "candidate"] == name and distance == 0.0


def test_a_replayed_search_runs_the_candidates_first_then_the_space(tab):
    names = [c.name for c in tab.space.spec.candidates]
    answers = replay(tab, samplers()["default"], seed=0, n=8)
    rows = [tab.rows.loc[i] for i, _ in answers]
    assert [r["candidate"] for r in rows[: len(names)]] == names
    assert all(r["candidate"] == "sampled" for r in rows[len(names) :])
    # The candidate inside the space reached the study with its own parameters, the others with their name.
    described = {c.name: dict(c.params) for c in tab.space.spec.candidates}
    assert described["qlora-r8-attention"]["lora.r"] == 8 and described["bitfit"] == {}


def test_the_whole_table_is_the_best_a_search_can_reach(tab):
    every = list(tab.rows.index)
    assert Scorer(tab).hypervolume(every) == pytest.approx(1.0)
    # The plain ranking on every row picks the best within each budget; `auto` may trade accuracy the paired test
    # cannot resolve for a cheaper config, never more than the most accurate trial has.
    assert Scorer(tab, tolerance=0).regret(every) == 0.0
    auto = Scorer(tab)
    assert 0.0 <= auto.regret(every) <= max(auto.best_within)
    assert sorted(auto.budgets) == auto.budgets and auto.budgets[0] > 0


def test_the_default_sampler_is_not_worse_than_random(tab, capsys):
    t0 = time.perf_counter()
    summary, _ = run(tab, ["random", "default"], [15], repeats=20, repeats_by_name={})
    assert time.perf_counter() - t0 < 10
    by = {s["sampler"]: s for s in summary}
    default, random = by["default"], by["random"]
    assert default["repeats"] == random["repeats"] == 20
    # Paired over the same seeds: the default's hypervolume is not significantly below random's, and its budget
    # pick loses not significantly more accuracy.
    assert default["hv_diff_high"] >= 0, json.dumps(default, default=str)[:400]
    assert default["regret_diff_low"] <= 0, json.dumps(default, default=str)[:400]


def test_at_the_default_budget_the_default_sampler_is_random_search(tab):
    """TPE samples at random until its start-up trials are done: up to 10 trials (the default search runs 9) it
    proposes exactly what Optuna's RandomSampler proposes with the same seed (the README says so)."""
    summary, _ = run(tab, ["random", "default"], [9], repeats=5, repeats_by_name={})
    default, random = summary[1], summary[0]
    assert default["hv_runs"] == random["hv_runs"] and default["regret_runs"] == random["regret_runs"]
