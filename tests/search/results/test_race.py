"""Racing tied configs over new seeds (``search.results.race``): the state replayed from the trials table, the
paired tests that drop a config, the stop rules, and the next round's configs."""

from __future__ import annotations

import json
import math
import warnings

import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from peft_search.search.results.metrics import DEFAULT_OBJECTIVES
from peft_search.search.results.race import next_round, race_state
from peft_search.search.results.records import RACE_ROUND_KEY, TrialResult
from peft_search.search.results.repeats import to_repeat
from tests.reports.builders import record

FAILED = None
"""In an accuracy list: that round's run failed."""


def _row(trial_id, accuracy, *, of=None, seed=0, seconds=100.0, status="complete", race_round=None):
    metrics = {"accuracy": accuracy, "train_time_s": seconds} if status == "complete" else {}
    row = record(trial_id, status, repeat_of=of, seed=seed, **metrics).to_row()
    row[RACE_ROUND_KEY] = race_round
    row["train_time_s"] = seconds if status != "running" else math.nan
    return row


def _table(runs, *, base_seed=0, seconds=100.0, others=0, repeats=0, running=()):
    """``runs``: config -> accuracies per block (block 0 the original, block r round r's run; ``FAILED``: that run
    failed). The first ``repeats`` rounds are seed repeats (no race round); ``others``: more original trials."""
    rows = []
    for config, accuracies in runs.items():
        rows.append(_row(config, accuracies[0], seed=base_seed, seconds=seconds))
        for r, accuracy in enumerate(accuracies[1:], start=1):
            status = "failed" if accuracy is FAILED else "complete"
            rows.append(
                _row(
                    f"{config}-r{r}",
                    accuracy,
                    of=config,
                    seed=base_seed + r,
                    seconds=seconds,
                    status=status,
                    race_round=None if r <= repeats else r,
                )
            )
    for config, r in running:
        rows.append(
            _row(f"{config}-r{r}", None, of=config, seed=base_seed + r, status="running", race_round=r)
        )
    rows += [_row(f"o{i}", 0.5, seed=base_seed, seconds=seconds) for i in range(others)]
    return pd.DataFrame(rows)


def _race(trials, entrants, **kwargs):
    options = {
        "base_seed": 0,
        "alpha": 0.05,
        "margin": 0.001,
        "max_rounds": 10,
        "budget": 100.0,
        "cheapest_first": list(reversed(entrants)),
    }
    return race_state(trials, entrants, **(options | kwargs))


def test_a_clearly_worse_config_is_dropped_with_its_p_value_and_round():
    lora, bitfit = [0.90, 0.91, 0.89, 0.92], [0.89, 0.88, 0.875, 0.895]
    # Two blocks do not show it (p = 0.15), three do.
    assert stats.ttest_rel(lora[:2], bitfit[:2], alternative="greater").pvalue > 0.05
    p = stats.ttest_rel(lora[:3], bitfit[:3], alternative="greater").pvalue
    assert p < 0.05

    state = _race(_table({"lora": lora[:3], "bitfit": bitfit[:3]}), ["lora", "bitfit"])
    (drop,) = state.eliminations
    assert (drop.trial_id, drop.round) == ("bitfit", 2)
    assert drop.p_value == pytest.approx(p)
    assert drop.gap == pytest.approx(sum(lora[:3]) / 3 - sum(bitfit[:3]) / 3)
    assert state.left == ("lora",) and state.stop == "one left" and state.pick == "lora"
    assert state.rounds == 2 and state.seeds == (0, 1, 2)
    assert state.detail.startswith("bitfit dropped after round 2: 1.8 points below lora, p = 0.0")
    assert next_round(_table({"lora": lora[:3], "bitfit": bitfit[:3]}), state, base_seed=0) == []

    before = _race(_table({"lora": lora[:2], "bitfit": bitfit[:2]}), ["lora", "bitfit"])
    assert before.eliminations == () and before.stop is None and before.pick is None


def test_a_tie_within_the_margin_stops_and_picks_the_cheapest():
    dora, lora = [0.900, 0.902], [0.899, 0.900]
    trials = _table({"dora": dora, "lora": lora})
    state = _race(trials, ["dora", "lora"], margin=0.01, cheapest_first=["lora", "dora"])
    d = [a - b for a, b in zip(dora, lora, strict=True)]
    bound = stats.ttest_1samp(d, 0.0, alternative="less").confidence_interval(0.95).high
    assert bound < 0.01
    assert state.stop == "within margin" and state.pick == "lora" and state.leader == "dora"
    assert state.eliminations == () and state.rounds == 1
    assert (
        state.detail
        == f"lora within 1 point of dora over 2 seeds (95 % upper bound {100 * bound:.1f} points)"
    )
    # One run settles nothing: the originals alone never stop on the margin.
    assert _race(_table({"dora": dora[:1], "lora": lora[:1]}), ["dora", "lora"], margin=0.01).stop is None
    # The cheapest leading settles it only where no other is shown more than the margin better.
    leads = _race(trials, ["dora", "lora"], margin=0.01, cheapest_first=["dora", "lora"])
    back = stats.ttest_1samp([-x for x in d], 0.0, alternative="less").confidence_interval(0.95).high
    assert 0 < back < 0.01 and leads.stop == "within margin" and leads.pick == "dora"
    assert (
        leads.detail
        == f"dora, the cheapest, leads over 2 seeds; none better (95 % upper bound {100 * back:.1f} points)"
    )
    assert _race(trials, ["dora", "lora"], margin=0.0, cheapest_first=["dora", "lora"]).stop is None


def test_three_configs_friedman_then_holm_drop_only_the_clearly_worse():
    runs = {
        "a": [0.90, 0.91, 0.90, 0.92, 0.91],
        "b": [0.905, 0.90, 0.895, 0.915, 0.905],
        "c": [0.88, 0.885, 0.87, 0.90, 0.885],
    }
    options = {"margin": 0.005, "cheapest_first": ["c", "b", "a"]}
    upto = {n: {k: v[:n] for k, v in runs.items()} for n in range(1, 6)}
    # Friedman rejects first at four blocks (three rounds).
    assert stats.friedmanchisquare(*upto[3].values()).pvalue > 0.05
    assert stats.friedmanchisquare(*upto[4].values()).pvalue < 0.05
    assert _race(_table(upto[3]), ["a", "b", "c"], **options).eliminations == ()

    raw = [stats.ttest_rel(upto[4]["a"], upto[4][c], alternative="greater").pvalue for c in ("b", "c")]
    held = multipletests(raw, method="holm")[1]
    assert held[0] > 0.05 and held[1] < 0.05

    state = _race(_table(runs), ["a", "b", "c"], **options)
    (drop,) = state.eliminations
    assert (drop.trial_id, drop.round, drop.p_value) == ("c", 3, pytest.approx(held[1]))
    assert state.left == ("a", "b") and state.leader == "a" and state.rounds == 4 and state.stop is None
    # Two left: the paired t-test alone, which does not drop b over five blocks.
    assert stats.ttest_rel(runs["a"], runs["b"], alternative="greater").pvalue > 0.05
    assert state.detail == "2 left within 0.4 points over 5 seeds; round 5 trains seed 5"


def test_the_budget_stops_a_race_whose_next_round_would_overrun_it():
    runs = {"a": [0.90, 0.91], "b": [0.91, 0.89]}
    trials = _table(runs, others=2)  # the search: four originals of 100 s
    state = _race(trials, ["a", "b"], budget=0.5)
    assert state.budget_s == 200.0 and state.spent_s == 200.0
    assert state.stop == "budget spent" and state.rounds == 1 and state.pick is None
    # Undecided: b is not shown worse, but its mean is 0.5 points below a's, past the margin (0.1): not picked.
    assert state.detail == (
        "budget spent after 2 seeds: still within 0.5 points; b more than 0.1 points below a on the mean, not picked"
    )
    assert state.close == ("a",) and state.left == ("a", "b")
    # Within a margin of 1 point, the cheaper b stays in the pick's pool.
    assert _race(trials, ["a", "b"], budget=0.5, margin=0.01).close == ("a", "b")
    assert next_round(trials, state, base_seed=0) == []
    # Enough for one more round: the race goes on.
    assert _race(trials, ["a", "b"], budget=1.0).stop is None
    # No budget: not even the first round.
    nothing = _race(trials, ["a", "b"], budget=0.0)
    assert nothing.stop == "budget spent" and nothing.rounds == 0
    # A part-done round is not counted, nor charged.
    partial = _table({"a": [0.90, 0.91, 0.92], "b": [0.91, 0.89]})
    assert _race(partial, ["a", "b"]).spent_s == 200.0 and _race(partial, ["a", "b"]).rounds == 1


def test_max_rounds():
    runs = {"a": [0.90, 0.91, 0.90], "b": [0.91, 0.89, 0.905]}
    state = _race(_table(runs), ["a", "b"], max_rounds=2)
    assert state.stop == "max rounds" and state.rounds == 2 and state.left == ("a", "b")
    assert state.detail == (
        "max rounds (2) done after 3 seeds: still within 0.2 points; b more than 0.1 points below a on the mean, "
        "not picked"
    )
    assert _race(_table(runs), ["a", "b"], max_rounds=2, margin=0.002).close == ("a", "b")
    assert _race(_table(runs), ["a", "b"], max_rounds=0).rounds == 0
    # Rounds already in the table past the limit are not counted.
    assert _race(_table(runs), ["a", "b"], max_rounds=1).rounds == 1


def test_a_failed_run_counts_its_round_and_its_block_leaves_the_tests():
    lora, bitfit = [0.90, 0.91, 0.92, 0.92], [0.89, 0.885, FAILED, 0.905]
    trials = _table({"lora": lora, "bitfit": bitfit})
    after_failure = _race(_table({"lora": lora[:3], "bitfit": bitfit[:3]}), ["lora", "bitfit"])
    assert after_failure.rounds == 2 and after_failure.eliminations == ()
    assert math.isnan(after_failure.accuracy["bitfit"][2])

    state = _race(trials, ["lora", "bitfit"])
    p = stats.ttest_rel([0.90, 0.91, 0.92], [0.89, 0.885, 0.905], alternative="greater").pvalue
    assert p < 0.05
    (drop,) = state.eliminations
    assert (drop.trial_id, drop.round, drop.p_value) == ("bitfit", 3, pytest.approx(p))
    assert state.to_json()["accuracy"]["bitfit"] == [0.89, 0.885, None, 0.905]


def test_seed_repeats_already_in_the_table_are_rounds_and_nothing_is_trained_twice():
    runs = {"a": [0.90, 0.91, 0.90], "b": [0.91, 0.89, 0.905]}
    trials = _table(runs, base_seed=42, repeats=2)  # search.repeats made both rounds
    assert trials[RACE_ROUND_KEY].isna().all()
    state = _race(trials, ["a", "b"], base_seed=42)
    assert state.rounds == 2 and state.seeds == (42, 43, 44) and state.spent_s == 400.0
    assert [(c["repeat_of"], c["seed"], c[RACE_ROUND_KEY]) for c in next_round(trials, state, 42)] == [
        ("a", 45, 3),
        ("b", 45, 3),
    ]
    # A repeat of one config at the next seed (repeats: top 1, 3 seeds): only the other is trained.
    more = pd.concat([trials, pd.DataFrame([_row("a-r3", 0.9, of="a", seed=45)])], ignore_index=True)
    assert [c["repeat_of"] for c in next_round(more, _race(more, ["a", "b"], base_seed=42), 42)] == ["b"]


def test_next_round_builds_each_config_as_a_repeat_with_the_shared_seed_and_its_round():
    runs = {"a": [0.90, 0.91], "b": [0.91, 0.89], "c": [0.90, 0.90]}
    trials = _table(runs, running=[("c", 2)])
    state = _race(trials, ["a", "b", "c"])
    configs = next_round(trials, state, base_seed=0)
    # c's run at seed 2 is under way: it is not started again.
    assert [(c["repeat_of"], c["seed"], c[RACE_ROUND_KEY]) for c in configs] == [("a", 2, 2), ("b", 2, 2)]
    original = TrialResult.from_row(trials[trials["trial_id"].eq("a")].iloc[0].to_dict())
    (as_repeat,) = to_repeat([original], DEFAULT_OBJECTIVES[:1], top=1, seeds=2, base_seed=0)[1:]
    assert configs[0] == {**as_repeat, RACE_ROUND_KEY: 2}
    assert configs[0]["peft_config"] == {"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 8}


def test_the_replay_is_deterministic():
    runs = {
        "a": [0.90, 0.91, 0.90, 0.92, 0.91],
        "b": [0.905, 0.90, 0.895, 0.915, 0.905],
        "c": [0.88, 0.885, 0.87, 0.90, 0.885],
    }
    trials = _table(runs)
    first = _race(trials, ["a", "b", "c"]).to_json()
    assert _race(trials, ["a", "b", "c"]).to_json() == first
    shuffled = trials.sample(frac=1.0, random_state=7).reset_index(drop=True)
    assert _race(shuffled, ["a", "b", "c"]).to_json() == first
    assert first["eliminations"][0]["trial_id"] == "c" and first["rounds"] == 4
    assert json.loads(json.dumps(first)) == first  # plain types, for ``best --format json``


def test_zero_variance_differences():
    same = [0.90, 0.91, 0.90, 0.92]
    # Identical runs: nothing dropped (scipy's p is NaN); a zero difference over two blocks shows nothing, over
    # three it is within any positive margin, and the cheapest is picked.
    identical = _race(_table({"a": same, "b": list(same)}), ["a", "b"], margin=0.01)
    assert identical.eliminations == () and identical.rounds == 2
    assert identical.stop == "within margin" and identical.pick == "b"
    # A constant lead over two blocks: scipy's t is infinite, two runs do not warrant a drop.
    a, b = [0.90, 0.92, 0.91], [0.88, 0.90, 0.89]
    assert _race(_table({"a": a[:2], "b": b[:2]}), ["a", "b"]).eliminations == ()
    # Over three blocks it is left to scipy, which calls it significant.
    (drop,) = _race(_table({"a": a, "b": b}), ["a", "b"]).eliminations
    assert drop.round == 2 and drop.p_value < 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy notes the near-constant differences
        assert stats.ttest_rel(a, b, alternative="greater").pvalue == pytest.approx(drop.p_value)
    # All ties among three: Friedman cannot be computed, nothing is dropped.
    tied = _race(_table({"a": same, "b": list(same), "c": list(same)}), ["a", "b", "c"], margin=0.01)
    assert tied.eliminations == () and tied.left == ("a", "b", "c") and tied.pick == "c"


def test_the_issues_example_is_not_settled_by_three_seeds():
    bitfit, lora = [0.928, 0.938, 0.925], [0.958, 0.932, 0.952]
    p = stats.ttest_rel(lora, bitfit, alternative="greater").pvalue
    assert p == pytest.approx(0.1392, abs=1e-4)  # LoRA leads by 1.7 points, yet one-sided p = 0.14
    state = _race(
        _table({"lora": lora, "bitfit": bitfit}, base_seed=1), ["lora", "bitfit"], base_seed=1, margin=0.01
    )
    assert state.eliminations == () and state.leader == "lora" and state.stop is None
    assert state.seeds == (1, 2, 3)
    loose = _race(
        _table({"lora": lora, "bitfit": bitfit}, base_seed=1), ["lora", "bitfit"], base_seed=1, alpha=0.2
    )
    (drop,) = loose.eliminations
    assert drop.p_value == pytest.approx(p) and drop.gap == pytest.approx(0.017)
    assert (
        loose.detail == "bitfit dropped after round 2: 1.7 points below lora, p = 0.14; lora is the one left"
    )


def test_entrants_must_be_complete_originals_ordered_once_by_cost():
    trials = _table({"a": [0.9], "b": [0.8]})
    with pytest.raises(ValueError, match="cheapest_first"):
        _race(trials, ["a", "b"], cheapest_first=["a"])
    with pytest.raises(ValueError, match="not complete original"):
        _race(trials, ["a", "zz"])
    assert _race(trials, ["a"]).stop == "one left"
