"""A real search on local Ray: Tune + Train V2 trials, Optuna storage, failures recorded, adapters saved."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from search.config import ConfigError
from search.driver import run_search
from tests.helpers import tiny_config

pytestmark = pytest.mark.slow

CANDIDATES = [
    {
        "name": "lora-qv",
        "learning_rate": 0.01,
        "peft_config": {
            "peft_type": "LORA",
            "task_type": "SEQ_CLS",
            "r": 2,
            "target_modules": ["query", "value"],
        },
    },
    # 80 soft-prompt tokens overflow the tiny model's 64 positions: this trial fails in its first forward pass.
    {
        "name": "breaks",
        "peft_config": {"peft_type": "PROMPT_TUNING", "task_type": "SEQ_CLS", "num_virtual_tokens": 80},
    },
    # PEFT refuses a target that matches nothing: recorded as infeasible, not as a crash.
    {
        "name": "no-such-layer",
        "peft_config": {
            "peft_type": "LORA",
            "task_type": "SEQ_CLS",
            "r": 2,
            "target_modules": ["nonexistent"],
        },
    },
]


@pytest.fixture(scope="module")
def finished(ray_local, tiny_bert, classification_csv, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    cfg = tiny_config(
        tiny_bert,
        classification_csv,
        results_dir=str(results),
        space={"methods": ["ia3", "bitfit"], "candidates": CANDIDATES},
        search={"num_trials": 5, "sampler": "tpe", "seed": 0, "max_concurrent": 2},
        training={"max_steps": 3},
        resources={"cpus_per_worker": 1},
    )
    search_dir = run_search(cfg, echo=False)
    return cfg, Path(search_dir)


def test_every_trial_recorded_with_its_status(finished):
    import pandas as pd

    _, search_dir = finished
    trials = pd.read_parquet(search_dir / "trials.parquet")
    assert len(trials) == 5
    by_candidate = trials.set_index("candidate")
    assert by_candidate.loc["lora-qv", "status"] == "complete"
    assert by_candidate.loc["breaks", "status"] == "failed"
    # The worker's own exception, not Ray's wrapper: the 88 positions do not fit the model's 64.
    assert by_candidate.loc["breaks", "error"].startswith("RuntimeError:")
    assert "(64)" in by_candidate.loc["breaks", "error"]
    assert by_candidate.loc["no-such-layer", "status"] == "infeasible"
    assert "No modules were targeted" in by_candidate.loc["no-such-layer", "error"]
    sampled = trials[trials["candidate"] == "sampled"]
    assert len(sampled) == 2 and (sampled["status"] == "complete").all()
    assert set(sampled["method"]) <= {"ia3", "bitfit"}
    done = trials[trials["status"] == "complete"]
    assert done["accuracy"].between(0, 1).all() and (done["trainable_params"] > 0).all()
    assert (done["peak_memory_kind"] == "cpu_rss").all() and (done["peak_memory_bytes"] > 0).all()
    assert (done["samples_per_s"] > 0).all() and (done["adapter_bytes"] > 0).all()


def test_optuna_storage_holds_the_study(finished):
    cfg, search_dir = finished
    study = optuna.load_study(study_name=cfg.name, storage=f"sqlite:///{search_dir / 'optuna.db'}")
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    assert all(len(t.values) == 3 for t in study.trials if t.state.name == "COMPLETE")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]


def test_adapters_load_with_peft(finished, tiny_bert):
    import pandas as pd
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    _, search_dir = finished
    trials = pd.read_parquet(search_dir / "trials.parquet")
    for _, row in trials[trials["status"] == "complete"].iterrows():
        path = Path(row["adapter_path"])
        assert (path / "adapter_config.json").is_file()
        assert json.loads((path / "adapter_config.json").read_text())["peft_type"] == row["peft_type"]
        assert not list(path.glob("model.safetensors")), "the base model must never be saved"
        base = AutoModelForSequenceClassification.from_pretrained(
            tiny_bert, num_labels=3, ignore_mismatched_sizes=True
        )
        PeftModel.from_pretrained(base, str(path))


def test_inputs_and_run_facts_written(finished):
    cfg, search_dir = finished
    assert yaml.safe_load((search_dir / "config.yaml").read_text())["name"] == cfg.name
    facts = json.loads((search_dir / "run.json").read_text())
    assert facts["train_examples"] == 24 and facts["eval_examples"] == 12 and facts["wall_time_s"] > 0
    assert (search_dir / "data" / "train.parquet").is_file()


def test_results_are_never_overwritten(finished, ray_local):
    cfg, search_dir = finished
    before = (search_dir / "trials.parquet").stat().st_mtime_ns
    with pytest.raises(ConfigError, match="results_dir: .* already holds a search"):
        run_search(cfg, echo=False)
    assert (search_dir / "trials.parquet").stat().st_mtime_ns == before


def test_token_authentication_stays_on(ray_local):
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert get_authentication_mode() == AuthenticationMode.TOKEN
