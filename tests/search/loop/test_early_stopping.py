"""Early stopping: the multi-objective rung rule, its Tune scheduler, and a real search that stops a trial."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest

from peft_search.search.errors import ConfigError
from peft_search.search.loop.early_stopping import ParetoASHA
from peft_search.search.loop.rungs import pareto_ranks, rung_steps, should_stop, standard_error
from peft_search.search.results.records import RUNG_KEY
from tests.conftest import CANDIDATES
from tests.helpers import tiny_config


def test_rung_steps():
    assert rung_steps(30, None, 3) == [10]
    assert rung_steps(200, 10, 3) == [10, 30, 90]
    assert rung_steps(100, 4, 2) == [4, 8, 16, 32, 64]
    assert rung_steps(10, 10, 3) == [] and rung_steps(1, None, 3) == []


def test_pareto_ranks_peel_fronts():
    # (negated accuracy, params): a 2-point front, then one behind it, then the worst.
    points = np.array([[-0.9, 100], [-0.5, 10], [-0.8, 200], [-0.4, 300]])
    assert pareto_ranks(points).tolist() == [0, 0, 1, 2]


def test_a_trial_on_the_rung_front_is_never_stopped():
    # Five accurate, expensive trials and one cheap, poor one: the cheap one is on the front and goes on.
    recorded = {f"big{i}": [-0.9 - i / 100, 1e6 + i] for i in range(5)}
    recorded["cheap"] = [-0.3, 10.0]
    assert not should_stop("cheap", recorded, 3)


def test_dominated_trials_stop_outside_the_best_third():
    recorded = {"a": [-0.9, 10.0], "b": [-0.8, 20.0], "c": [-0.7, 30.0], "d": [-0.6, 40.0]}
    # keep = ceil(4 / 3) = 2: "b" has one trial in a better rank, so it goes on; "c" and "d" have two or more.
    assert not should_stop("a", recorded, 3)
    assert not should_stop("b", recorded, 3)
    assert should_stop("c", recorded, 3) and should_stop("d", recorded, 3)
    # With a gentler factor more go on: keep = ceil(4 / 1.5) = 3.
    assert not should_stop("c", recorded, 1.5) and should_stop("d", recorded, 1.5)


def test_a_tie_within_the_rungs_noise_is_no_domination():
    # Accuracy on 100 rows: 0.62 against 0.61 is a tie (standard error of the difference ~0.07); the cheaper
    # trial no longer stops the other. 0.90 against 0.61 is far beyond two standard errors: it still does.
    recorded = {"lora": [-0.61, 150_000.0], "bitfit": [-0.62, 23_000.0], "x": [-0.60, 160_000.0]}
    se = {t: [standard_error(-v[0], 100), 0.0] for t, v in recorded.items()}
    assert should_stop("x", recorded, 3)  # exact comparison: bitfit and lora both dominate it
    assert not should_stop("x", recorded, 3, se, margin=2.0)
    assert not should_stop("lora", recorded, 3, se, margin=2.0)
    clear = {**recorded, "lora": [-0.90, 150_000.0], "x": [-0.40, 160_000.0]}
    se = {t: [standard_error(-v[0], 100), 0.0] for t, v in clear.items()}
    assert should_stop("x", clear, 3, se, margin=2.0)  # 0.90 vs 0.40 on 100 rows: clearly dominated
    sched = ParetoASHA([("accuracy", "max"), ("trainable_params", "min")], 3, noise_margin=2.0)
    trial = SimpleNamespace
    for name, acc, params in (("a", 0.62, 23_000), ("b", 0.61, 150_000), ("c", 0.60, 160_000)):
        result = {RUNG_KEY: 5, "accuracy": acc, "trainable_params": params, "eval_rows": 100}
        assert sched.on_trial_result(None, trial(trial_id=name), result) == "CONTINUE"


def test_scheduler_decides_on_rung_results_only():
    sched = ParetoASHA([("accuracy", "max"), ("trainable_params", "min")], reduction_factor=3)
    trial = SimpleNamespace
    good, poor = trial(trial_id="good"), trial(trial_id="poor")
    assert (
        sched.on_trial_result(None, good, {RUNG_KEY: 5, "accuracy": 0.9, "trainable_params": 10})
        == "CONTINUE"
    )
    # A final result (no rung) is never stopped, however poor.
    assert sched.on_trial_result(None, poor, {"accuracy": 0.1, "trainable_params": 99}) == "CONTINUE"
    assert sched.on_trial_result(None, poor, {RUNG_KEY: 5, "accuracy": 0.1, "trainable_params": 99}) == "STOP"
    assert sched.stopped == {"poor": 5}
    # Rungs are compared separately: at step 10 "poor" is alone.
    assert (
        sched.on_trial_result(None, poor, {RUNG_KEY: 10, "accuracy": 0.1, "trainable_params": 99})
        == "CONTINUE"
    )


def test_rungs_rank_on_the_objectives_early_stopping_names(tiny_bert, classification_csv):
    from peft_search.search.loop.tuning import scheduler

    # Five accurate, expensive trials, then a cheap and poor one: on all objectives it is on the rung's front and
    # goes on; ranked on accuracy alone (as a one-metric ASHA) it is outside the best third and stops.
    rungs = [(f"big{i}", 0.9 - i / 100, 1_000_000 + i) for i in range(5)] + [("cheap", 0.3, 10)]
    decisions = {}
    for objectives in (None, ["accuracy"]):
        cfg = tiny_config(
            tiny_bert,
            classification_csv,
            search={"early_stopping": {"rule": "asha", "objectives": objectives}},
        )
        sched = scheduler(cfg)
        for name, acc, params in rungs:
            result = {RUNG_KEY: 5, "accuracy": acc, "trainable_params": params, "peak_memory_bytes": 1e9}
            decisions[str(objectives), name] = sched.on_trial_result(
                None, SimpleNamespace(trial_id=name), result
            )
    assert decisions["None", "cheap"] == "CONTINUE"
    assert decisions["['accuracy']", "cheap"] == "STOP"
    assert decisions["None", "big0"] == decisions["['accuracy']", "big0"] == "CONTINUE"


def test_bad_early_stopping_settings_fail_before_ray(tiny_bert, classification_csv, tmp_path):
    from peft_search.search.loop.driver import prepare

    shorthand = tiny_config(tiny_bert, classification_csv, search={"early_stopping": "asha"})
    assert shorthand.search.early_stopping.rule == "asha" and shorthand.search.early_stopping.eval_size == 100
    with pytest.raises(
        ConfigError, match=r"^search.early_stopping.rule: .*'none' or 'asha' \(got 'hyperband'\)"
    ):
        tiny_config(tiny_bert, classification_csv, search={"early_stopping": "hyperband"})
    with pytest.raises(ConfigError, match=r"^search.early_stopping.reduction_factor: "):
        tiny_config(
            tiny_bert, classification_csv, search={"early_stopping": {"rule": "asha", "reduction_factor": 1}}
        )

    with pytest.raises(
        ConfigError,
        match=r"^search.early_stopping.objectives: 'eval_loss' is not one of the search's objectives; choose from "
        r"accuracy, trainable_params",
    ):
        tiny_config(
            tiny_bert,
            classification_csv,
            search={"early_stopping": {"rule": "asha", "objectives": ["eval_loss"]}},
        )
    with pytest.raises(ConfigError, match=r"^search.early_stopping.objectives: .*at least 1 item"):
        tiny_config(
            tiny_bert, classification_csv, search={"early_stopping": {"rule": "asha", "objectives": []}}
        )
    with pytest.raises(ConfigError, match=r"^search.early_stopping: .*num_workers 1"):
        from peft_search.search.settings.loading import parse_config

        parse_config(
            {
                "name": "x",
                "model": {"name_or_path": tiny_bert},
                "dataset": {"source": classification_csv},
                "search": {"early_stopping": "asha"},
                "resources": {"num_workers": 2},
                "training": {"batch_size": 4},
            }
        )
    cfg = tiny_config(
        tiny_bert,
        classification_csv,
        results_dir=str(tmp_path),
        search={"early_stopping": {"rule": "asha", "grace_steps": 6}},
        training={"max_steps": 6},
    )
    with pytest.raises(
        ConfigError, match=r"^search.early_stopping.grace_steps: 6 is not below the trials' 6"
    ):
        prepare(cfg)
    assert not any(tmp_path.iterdir())


def _lora(name: str, r: int) -> dict:
    # A learning rate too small to move the weights: LoRA's B starts at zero, so both trials predict exactly as
    # the base model does and tie on accuracy at the rung; the rank-4 one has more parameters and is dominated.
    return {
        "name": name,
        "learning_rate": 1e-9,
        "peft_config": {
            "peft_type": "LORA",
            "task_type": "SEQ_CLS",
            "r": r,
            "target_modules": ["query", "value"],
        },
    }


@pytest.mark.slow
def test_search_stops_a_dominated_trial(ray_local, tiny_bert, classification_csv, tmp_path):
    from peft_search.search.loop.driver import run_search

    cfg = tiny_config(
        tiny_bert,
        classification_csv,
        results_dir=str(tmp_path),
        space={
            "methods": [],
            "candidates": [
                _lora("lora-r2", 2),
                _lora("lora-r4", 4),
                # Fewer parameters than either: never dominated, so it trains to the end in the same reused actor
                # the stopped trial left.
                {
                    "name": "ia3",
                    "learning_rate": 0.01,
                    "peft_config": {
                        "peft_type": "IA3",
                        "task_type": "SEQ_CLS",
                        "target_modules": ["key", "value"],
                        "feedforward_modules": [],
                    },
                },
            ],
        },
        objectives=[{"metric": "accuracy", "mode": "max"}, {"metric": "trainable_params", "mode": "min"}],
        search={
            "num_trials": 3,
            "max_concurrent": 1,
            # 6 rows cannot tell anything apart: compare the rung's values as they are (the mechanics under test).
            "early_stopping": {"rule": "asha", "grace_steps": 3, "eval_size": 6, "noise_margin": 0},
        },
        training={"max_steps": 8},
        resources={"cpus_per_worker": 1},
    )
    search_dir = run_search(cfg, echo=False)
    trials = pd.read_parquet(search_dir / "trials.parquet").set_index("candidate")
    assert trials.loc["lora-r2", "status"] == "complete" and trials.loc["ia3", "status"] == "complete"
    stopped = trials.loc["lora-r4"]
    assert stopped["status"] == "stopped_early", stopped["error"]
    assert stopped["stopped_at_step"] == 3 and stopped["train_steps"] == 3
    assert stopped["eval_rows"] == 6 and pd.isna(stopped["adapter_path"])
    assert "stopped early at step 3" in stopped["error"]
    assert stopped["trainable_params"] > trials.loc["lora-r2", "trainable_params"]
    for name in (
        "lora-r2",
        "ia3",
    ):  # trained to the end, evaluated at the rung and then on every held-out row
        row = trials.loc[name]
        assert row["train_steps"] == 8 and row["eval_rows"] == 12 and row["rung_eval_time_s"] > 0
        assert row["adapter_path"]
    # Optuna: the stopped trial is PRUNED (as its own pruners leave a trial), with where and how it stopped.
    study = optuna.load_study(study_name=cfg.name, storage=f"sqlite:///{search_dir / 'optuna.db'}")
    states = {t.number: t.state.name for t in study.trials}
    assert sorted(states.values()) == ["COMPLETE", "COMPLETE", "PRUNED"]
    pruned = next(t for t in study.trials if t.state.name == "PRUNED")
    assert pruned.user_attrs["peft_search.stopped_at_step"] == 3
    assert pruned.user_attrs["peft_search.status"] == "stopped_early"
    assert pruned.number == stopped["optuna_trial"]  # the table links each row to its Optuna trial
    assert sorted(trials["optuna_trial"]) == sorted(states)
    assert pruned.user_attrs["peft_search.rung.trainable_params"] == stopped["trainable_params"]
    assert all(t.state.name == "COMPLETE" for t in study.best_trials)
    facts = json.loads((search_dir / "run.json").read_text())
    assert facts["early_stopping"]["rule"] == "asha" and facts["early_stopping"]["rungs"] == [3]
    page = (search_dir / "report.html").read_text()
    assert "3 (2 complete, 1 stopped_early)" in page and "1 stopped early, 0.6 trials&#x27; worth" in page


def test_rung_evaluations_leave_training_unchanged(tiny_bert, classification_csv, tmp_path):
    """A trial evaluated at rungs trains exactly as one that is not: same loss path, same adapter weights."""
    import torch

    from peft_search.search.settings.trial import TrialConfig
    from peft_search.search.worker.training import run_trial
    from tests.helpers import prepared

    prep, settings = prepared(tiny_bert, classification_csv, "sequence-classification", tmp_path)
    settings = dataclasses.replace(
        settings.with_config(search={"early_stopping": {"eval_size": 5}}, resources={"cpus_per_worker": 1}),
        steps=6,
    )
    lora = CANDIDATES[0]  # LoRA r=2 on query/value
    trial = TrialConfig("lora", "none", lora["peft_config"], lora["learning_rate"], lora["name"])
    weights, reports = [], []
    for rungs in ([], [2, 4]):
        metrics, adapter = run_trial(
            trial,
            dataclasses.replace(settings, rungs=tuple(rungs)),
            prep.data,
            device=torch.device("cpu"),
            on_rung=reports.append,
        )
        from safetensors.torch import load_file

        weights.append((metrics, load_file(f"{adapter.name}/adapter_model.safetensors")))
        adapter.cleanup()
    (plain, w0), (rung, w1) = weights
    assert [r[RUNG_KEY] for r in reports] == [2, 4] and all(r["eval_rows"] == 5 for r in reports)
    assert all(r["trainable_params"] == plain["trainable_params"] for r in reports)
    assert reports[0]["train_steps"] == 2 and 0 < reports[0]["train_time_s"] < reports[1]["train_time_s"]
    assert plain["rung_eval_time_s"] == 0 and rung["rung_eval_time_s"] > 0
    assert rung["accuracy"] == plain["accuracy"] and rung["eval_loss"] == pytest.approx(
        plain["eval_loss"], abs=1e-6
    )
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)


def test_a_4bit_trial_trains_on_after_a_rung_evaluation(tiny_bert, classification_csv, tmp_path):
    """bitsandbytes repacks 4-bit weights for its CPU inference kernel at a no-grad evaluation (on AVX512-BF16 CPUs)
    and would train on with that kernel, which fails: rung evaluations keep the generic path."""
    import torch

    from peft_search.search.settings.trial import TrialConfig
    from peft_search.search.worker.training import run_trial
    from tests.helpers import prepared

    prep, settings = prepared(tiny_bert, classification_csv, "sequence-classification", tmp_path)
    # 64 inputs per row, a whole 4-bit block: the layers bitsandbytes repacks where the CPU has AVX512-BF16.
    wide = {"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 2, "target_modules": ["intermediate.dense"]}
    settings = dataclasses.replace(settings.with_config(search={"early_stopping": {"eval_size": 5}}), steps=4)
    reports = []
    metrics, adapter = run_trial(
        TrialConfig("lora", "nf4", wide, 1e-3),
        dataclasses.replace(settings, rungs=(1, 2)),
        prep.data,
        device=torch.device("cpu"),
        on_rung=reports.append,
    )
    adapter.cleanup()
    assert [r[RUNG_KEY] for r in reports] == [1, 2] and metrics["train_steps"] == 4
