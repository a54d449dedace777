"""An infeasible config completes with the worst outcome, so the sampler learns to avoid it (a FAILED trial
teaches Optuna nothing)."""

from __future__ import annotations

import math

import optuna
import pytest

from peft_search.search.loop.tuning import make_sampler
from peft_search.search.results.metrics import WORST_COST, get_metric, objective_metrics
from peft_search.search.results.records import ERROR_KEY, STATUS_KEY
from peft_search.search.worker.infeasible import penalty_result
from peft_search.spaces.sampling import DefineByRun, SpaceSpec
from tests.helpers import prepared

METRICS = ["accuracy", "trainable_params", "peak_memory_bytes"]
BROKEN = ("vera", "int8")  # stands for any method x quantization pair that cannot run on the model


def _search(ctx, seed: int, record_as: str, n_trials: int = 60) -> list[tuple[str, str]]:
    """Ask/tell loop shaped like ``OptunaSearch``: values from a result dict, FAIL when there is none."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler("tpe", seed, n_trials, n_startup_trials=10)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=sampler)
    space = DefineByRun(SpaceSpec(("lora", "ia3", "vera", "bitfit"), ("none", "int8"), (1e-4, 1e-2)), ctx)
    proposed = []
    for i in range(n_trials):
        trial = study.ask()
        config = space(trial)
        pair = (config["method"], config["quantization"])
        proposed.append(pair)
        if pair == BROKEN:
            if record_as == "failed":
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            result = penalty_result("PEFT refused it")
        else:
            # A smooth, plausible landscape: accuracy grows with log learning rate, costs depend on the method.
            lr = config["learning_rate"]
            result = {
                "accuracy": 0.5 + 0.05 * math.log10(lr / 1e-4) + 0.01 * (i % 3),
                "trainable_params": {"lora": 8000, "ia3": 300, "vera": 100, "bitfit": 900}[pair[0]],
                "peak_memory_bytes": 4e8 if pair[1] == "none" else 2.5e8,
            }
        study.tell(trial, [result[m] for m in METRICS])
    return proposed


@pytest.fixture(scope="module")
def ctx(tiny_bert, classification_csv, tmp_path_factory):
    prep, _ = prepared(tiny_bert, classification_csv, "sequence-classification", tmp_path_factory.mktemp("s"))
    return prep.space_context


def test_penalty_is_worst_on_every_objective_a_config_may_name():
    r = penalty_result("x")
    assert r[STATUS_KEY] == "infeasible" and r[ERROR_KEY] == "x"
    for metric in objective_metrics():
        assert r[metric] == (0.0 if get_metric(metric).direction == "max" else WORST_COST), metric
    assert r["accuracy"] == 0.0 and r["trainable_params"] == WORST_COST


def test_sampler_avoids_a_config_recorded_infeasible_more_than_one_recorded_failed(ctx):
    late = {"infeasible": 0, "failed": 0}
    for seed in range(3):
        for record_as in late:
            proposed = _search(ctx, seed, record_as)
            late[record_as] += sum(pair == BROKEN for pair in proposed[20:])
    # 3 seeds x 40 guided trials each; the broken pair's prior share is 1 in 8 (15). Told as failures, TPE
    # never sees it and keeps proposing it (measured 91); told as worst outcomes, far less (measured 9).
    assert late["failed"] >= 8, late
    assert late["infeasible"] * 3 <= late["failed"], late
