"""A noise-aware pick: per-row predictions, the paired exact McNemar test (statsmodels), and ``best --tolerance``.

The predictions are constructed, so each outcome is known: a cheap trial that ties with the most accurate within
noise is picked by ``auto`` and passed over by ``0``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binomtest

from peft_search.reports.choice import choose_best
from peft_search.reports.data import load_report_data
from peft_search.reports.html import build_report
from peft_search.search.cli import main
from peft_search.search.results.layout import ResultsDir
from peft_search.search.results.noise import mcnemar_p, pairwise_p, resolvable_difference
from tests.reports.builders import record

N = 300


def _correct(right: int, shared_wrong_first: int = 0, seed: int = 0) -> list[bool]:
    """``right`` of N rows right; rows 0..shared_wrong_first-1 wrong (so trials can share their errors)."""
    rng = np.random.default_rng(seed)
    rows = np.zeros(N, dtype=bool)
    rest = np.arange(shared_wrong_first, N)
    rows[rng.choice(rest, size=right, replace=False)] = True
    return rows.tolist()


# t0: most accurate, expensive. t1: 3 rows fewer right, 50x cheaper (a tie within noise). t2: far worse, cheapest.
ROWS = {
    "t0": _correct(266, seed=0),
    "t1": _correct(263, seed=1),
    "t2": _correct(200, seed=2),
}


@pytest.fixture
def tie(write_search):
    records = [
        record("t0", accuracy=266 / N, trainable_params=5000, peak_memory_bytes=3e9),
        record("t1", accuracy=263 / N, trainable_params=100, peak_memory_bytes=2e9),
        record("t2", accuracy=200 / N, trainable_params=10, peak_memory_bytes=1e9),
    ]
    path = write_search(
        records, [("accuracy", "max"), ("trainable_params", "min"), ("peak_memory_bytes", "min")]
    )
    ResultsDir(path).write_predictions(
        {
            t: {"label": [0] * N, "prediction": [0 if c else 1 for c in rows], "correct": rows}
            for t, rows in ROWS.items()
        }
    )
    return path


def test_the_exact_mcnemar_p_value_is_the_binomial_test_on_the_discordant_rows():
    a, b = np.array(ROWS["t0"]), np.array(ROWS["t1"])
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    expected = binomtest(only_a, only_a + only_b, 0.5).pvalue  # scipy, independently
    assert mcnemar_p(ROWS["t0"], ROWS["t1"]) == pytest.approx(expected)
    assert mcnemar_p(ROWS["t0"], ROWS["t2"]) < 1e-6
    assert mcnemar_p(ROWS["t0"], ROWS["t0"]) == 1.0
    table = pairwise_p(ROWS, ["t0", "t1", "t2", "no-rows"])
    assert set(table) == {"t0", "t1", "t2"} and table["t1"]["t0"] == table["t0"]["t1"]
    with pytest.raises(ValueError, match="differ in number"):
        mcnemar_p([True], [True, False])


def test_auto_picks_the_cheap_tie_and_zero_the_most_accurate(tie):
    results = ResultsDir(tie)
    trials, correct = results.read_trials(), results.correct_by_trial()
    objectives = results.objectives()
    auto = choose_best(trials, objectives, tolerance="auto", correct=correct)
    assert auto.trial["trial_id"] == "t1" and auto.most_accurate["trial_id"] == "t0"
    assert auto.p_value == pytest.approx(mcnemar_p(ROWS["t0"], ROWS["t1"])) and auto.p_value > 0.05
    assert auto.indistinguishable == ("t0", "t1")
    assert "exact McNemar test on the 300 paired held-out rows" in auto.rule
    zero = choose_best(trials, objectives, tolerance=0, correct=correct)
    assert zero.trial["trial_id"] == "t0" and zero.p_value is None
    margin = choose_best(trials, objectives, tolerance=0.02, correct=correct)
    assert margin.trial["trial_id"] == "t1" and margin.indistinguishable == ("t0", "t1")
    wide = choose_best(trials, objectives, tolerance=0.3, correct=correct, prefer="memory")
    assert wide.trial["trial_id"] == "t2"  # within 0.3 of the best, the lowest peak memory
    # Without per-row predictions, auto says it ranks as 0.
    bare = choose_best(trials, objectives, tolerance="auto")
    assert bare.trial["trial_id"] == "t0" and "fell back to 0" in bare.rule


def test_best_json_carries_the_pick_the_most_accurate_the_p_value_and_the_rule(tie, capsys):
    assert main(["best", str(tie), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"pick", "most_accurate", "p_value", "indistinguishable", "rule"} <= set(out)
    assert out["pick"]["trial_id"] == "t1" and out["most_accurate"]["trial_id"] == "t0"
    assert out["indistinguishable"] == ["t0", "t1"] and 0.05 < out["p_value"] < 1
    assert main(["best", str(tie), "--format", "json", "--tolerance", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["pick"]["trial_id"] == "t0"
    # The terminal paragraph: the pick, the most accurate, the p-value, the rule.
    assert main(["best", str(tie)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Best trial: t1 ") and "best on the objectives alone: trial t0" in text
    assert (
        f"p = {mcnemar_p(ROWS['t0'], ROWS['t1']):.3g} (exact McNemar test" in text
        and "why: tolerance auto" in text
    )


@pytest.mark.parametrize("flag", [["--tolerance", "lots"], ["--tolerance", "2"], ["--prefer", "speed"]])
def test_bad_tolerance_or_prefer_is_one_line_exit_2(tie, capsys, flag):
    assert main(["best", str(tie), *flag]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"peft-search: error: {flag[0]}: ") and "\n" not in err


def test_the_report_picker_carries_the_paired_tests_and_says_its_rule(tie):
    data = load_report_data(tie)
    assert data.pvalues["t0"]["t1"] == pytest.approx(mcnemar_p(ROWS["t0"], ROWS["t1"]))
    page = build_report(tie)
    assert '<select id="tolerance">' in page
    assert "tolerance auto: of the trials within the limits, those the exact McNemar test" in page
    assert '"alpha": 0.05' in page


def test_resolvable_difference_shrinks_with_the_rows():
    assert resolvable_difference(300) == pytest.approx(0.0571, abs=5e-4)  # 1.96 * sqrt(2 * .85 * .15 / 300)
    assert resolvable_difference(3000) < resolvable_difference(300) / 3
