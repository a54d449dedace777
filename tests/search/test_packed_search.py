"""Packed trials in a real search (``search.packing``): LoRA-family trials train in groups through one base model,
each still its own Tune and Optuna trial, with its own result, adapter and rung reports; other methods train alone."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from peft_search.search.errors import ConfigError
from peft_search.search.loop.driver import run_search
from peft_search.search.results.layout import ResultsDir
from tests.helpers import tiny_config

pytestmark = pytest.mark.slow

LORA = {"peft_type": "LORA", "task_type": "SEQ_CLS", "lora_dropout": 0.0}
CANDIDATES = [
    {"name": f"lora-{i}", "learning_rate": lr, "peft_config": {**LORA, "r": r, "target_modules": targets}}
    for i, (r, lr, targets) in enumerate(
        [
            (2, 0.01, ["query", "value"]),
            (4, 0.005, ["query", "value"]),
            (2, 0.02, ["query", "key", "value"]),
            (8, 0.01, ["value"]),
        ]
    )
] + [{"name": "ia3", "peft_config": {"peft_type": "IA3", "task_type": "SEQ_CLS"}}]


@pytest.fixture(scope="module")
def packed(ray_local, bert_without_dropout, classification_csv, tmp_path_factory):
    cfg = tiny_config(
        bert_without_dropout,
        classification_csv,
        results_dir=str(tmp_path_factory.mktemp("packed")),
        space={"methods": ["lora"], "candidates": CANDIDATES},
        search={
            "num_trials": 5,
            "packing": 2,
            "early_stopping": {"rule": "asha", "grace_steps": 2, "reduction_factor": 2, "eval_size": 8},
        },
        training={"max_steps": 4},
        resources={"cpus_per_worker": 1},
    )
    return cfg, Path(run_search(cfg, echo=False))


def test_lora_trials_train_in_groups_and_each_stays_a_trial(packed):
    cfg, search_dir = packed
    results = ResultsDir(search_dir)
    trials = results.read_trials().set_index("candidate")
    assert len(trials) == 5
    lora = trials.loc[[c["name"] for c in CANDIDATES[:4]]]
    finished = lora[lora["status"] == "complete"]
    # Two groups of two (packing: 2); each member its own row, with its own adapter and held-out score.
    assert lora["group"].value_counts().tolist() == [2, 2]
    assert (finished["group_size"] == 2).all()
    assert (finished["group_peak_memory_bytes"] >= finished["peak_memory_bytes"]).all()
    assert finished["accuracy"].between(0, 1).all() and finished["adapter_path"].map(_saved).all()
    assert len(set(finished["adapter_path"])) == len(finished)
    # Rung results reached Tune from inside the group: every member was evaluated at step 2 (its curve says so).
    for row in lora.itertuples():
        assert row.status in ("complete", "stopped_early"), row
        if row.status == "stopped_early":
            assert row.stopped_at_step == 2
    assert all(_curve(c)["eval_step"][0] == 2 for c in finished["learning_curve"])
    # IA3 cannot share a forward pass: it trained alone, as without packing.
    assert (
        trials.loc["ia3", "status"] == "complete" and trials.loc["ia3", "group"] != trials.loc["ia3", "group"]
    )
    # To Optuna, each member is its own trial.
    study = optuna.load_study(study_name=cfg.name, storage=results.optuna_url)
    assert sorted(t.number for t in study.trials) == sorted(trials["optuna_trial"].astype(int))


def test_packing_where_it_cannot_apply_is_refused_before_ray(tiny_bert, classification_csv, tmp_path):
    with pytest.raises(ConfigError, match="search.packing: packed groups train on one worker"):
        tiny_config(
            tiny_bert,
            classification_csv,
            results_dir=str(tmp_path),
            search={"packing": "auto"},
            resources={"num_workers": 2},
        )
    with pytest.raises(ConfigError, match="search.packing"):
        tiny_config(tiny_bert, classification_csv, results_dir=str(tmp_path), search={"packing": 0})


def _saved(path: str) -> bool:
    return (Path(path) / "adapter_model.safetensors").is_file()


def _curve(text: str) -> dict:
    import json

    return json.loads(text)


def test_a_member_the_scheduler_stops_leaves_its_group_and_the_other_trains_on(
    ray_local, bert_without_dropout, classification_csv, tmp_path
):
    """Tune's own scheduler answers each member's rung report; the one it stops leaves the group at that step."""
    import ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    from peft_search.search.loop.prepare import prepare
    from peft_search.search.loop.tuning import FixedConfigs
    from peft_search.search.results.records import RUNG_KEY, STATUS_KEY
    from peft_search.search.worker.pack_groups import LOST_S, start_coordinator
    from peft_search.search.worker.trial import trial_driver, trial_resources

    class StopOne(FIFOScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            stop = trial.config["candidate"] == "stopped" and result.get(RUNG_KEY) == 2
            return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

    cfg = tiny_config(
        bert_without_dropout,
        classification_csv,
        results_dir=str(tmp_path),
        search={"packing": 2, "early_stopping": {"rule": "asha", "grace_steps": 2, "eval_size": 8}},
        training={"max_steps": 6},
    )
    prep = prepare(cfg)
    assert prep.settings.rungs[0] == 2
    coordinator = start_coordinator(prep.settings, prep.data)
    configs = [
        {
            "method": "lora",
            "quantization": "none",
            "learning_rate": 0.01,
            "candidate": name,
            "peft_config": peft,
        }
        for name, peft in [("kept", CANDIDATES[0]["peft_config"]), ("stopped", CANDIDATES[1]["peft_config"])]
    ]
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, settings=prep.settings, data=prep.data),
        trial_resources(prep.settings),
    )
    results = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=FixedConfigs(configs), num_samples=2, scheduler=StopOne(), max_concurrent_trials=4
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name="stop"),
    ).fit()
    last = {r.config["candidate"]: r.metrics for r in results}
    assert last["stopped"][STATUS_KEY] == "running" and last["stopped"][RUNG_KEY] == 2
    assert last["kept"][STATUS_KEY] == "complete" and last["kept"]["train_steps"] == 6
    # Tune's answer reached the group at once (a member never heard from is dropped only after LOST_S).
    assert last["kept"]["time_total_s"] < LOST_S
    assert last["kept"]["group"] == last["stopped"]["group"] == "g0"
    assert ray.get(coordinator.groups.remote()) == ["g0"]
    # The kept member went on alone: its rung evaluations after step 2 are its own only.
    assert last["kept"]["learning_curve"]["eval_step"][0] == 2
