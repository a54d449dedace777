"""A real search on local Ray: Tune + Train V2 trials, Optuna storage, failures recorded, adapters saved."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml

from peft_search.search.errors import ConfigError
from peft_search.search.loop.driver import run_search
from peft_search.search.results.layout import ResultsDir
from peft_search.search.results.metrics import WORST_COST
from peft_search.search.results.records import STATUSES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(small_search):
    return small_search


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


def test_the_table_states_each_status_and_links_its_optuna_trial(finished):
    """Statuses are explicit values, never inferred; every row names the Optuna trial that proposed it."""
    cfg, search_dir = finished
    results = ResultsDir(search_dir)
    trials = results.read_trials()
    assert set(trials["status"]) <= set(STATUSES) and "error" in trials
    assert (trials.loc[trials["status"] == "complete", "error"] == "").all()
    study = optuna.load_study(study_name=cfg.name, storage=results.optuna_url)
    by_number = {t.number: t for t in study.trials}
    assert sorted(trials["optuna_trial"].astype(int)) == sorted(by_number)
    for row in trials.itertuples():
        state = by_number[int(row.optuna_trial)].state.name
        assert state == {"complete": "COMPLETE", "infeasible": "COMPLETE", "failed": "FAIL"}[row.status], row
    infeasible = trials.loc[trials["status"] == "infeasible", "optuna_trial"].astype(int)
    assert [by_number[n].user_attrs["peft_search.status"] for n in infeasible] == ["infeasible"]
    # The typed record reads back every row as written.
    assert [r.status for r in results.read_records()] == list(trials["status"])


def test_optuna_storage_holds_the_study(finished):
    cfg, search_dir = finished
    study = optuna.load_study(study_name=cfg.name, storage=f"sqlite:///{search_dir / 'optuna.db'}")
    states = sorted(t.state.name for t in study.trials)
    # The infeasible candidate completes with the worst outcome (search.worker.infeasible), so TPE learns from it.
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]
    worst = [t for t in study.trials if t.state.name == "COMPLETE" and t.values[1] == WORST_COST]
    assert len(worst) == 1 and worst[0].values == [0.0, WORST_COST, WORST_COST]
    assert all(len(t.values) == 3 for t in study.trials if t.state.name == "COMPLETE")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]


def test_adapters_load_with_peft(finished, tiny_bert):
    import pandas as pd
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    _, search_dir = finished
    trials = pd.read_parquet(search_dir / "trials.parquet")
    for _, row in trials[trials["status"] == "complete"].iterrows():
        path = search_dir / row["adapter_path"]  # recorded relative to the search
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


@pytest.mark.parametrize(
    ("resources", "field"),
    [({"gpus_per_worker": 64}, "gpus_per_worker"), ({"cpus_per_worker": 3}, "cpus_per_worker")],
)
def test_a_trial_no_node_can_hold_is_refused(
    ray_local, tiny_bert, classification_csv, tmp_path, resources, field
):
    """Ray would keep such a trial pending for ever (a local instance adds no node): the search refuses it, in one
    line naming the field, before measuring or training anything, and leaves no results directory."""
    from tests.helpers import tiny_config

    cfg = tiny_config(tiny_bert, classification_csv, results_dir=str(tmp_path), resources=resources)
    with pytest.raises(ConfigError) as refused:
        run_search(cfg, echo=False)
    assert str(refused.value).startswith(f"resources.{field}: 1 worker(s) of ")
    assert "cannot be placed: the local Ray instance has " in str(refused.value)
    assert "\n" not in str(refused.value) and list(tmp_path.iterdir()) == []


def test_token_authentication_stays_on(ray_local):
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert get_authentication_mode() == AuthenticationMode.TOKEN


def test_best_exports_an_adapter_that_reproduces_its_accuracy(finished, tiny_bert, tmp_path):
    """`peft-search best --export`: PEFT loads the adapter and gets the recorded held-out accuracy back."""
    import subprocess
    import sys

    import pandas as pd
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peft_search.search.inputs.data import Splits, tokenize
    from peft_search.search.worker.evaluation import evaluate

    cfg, search_dir = finished
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "peft_search",
            "best",
            str(search_dir),
            "--max-params",
            "1e6",
            "--tolerance",
            "0",
            "--export",
            str(tmp_path / "export"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    trials = pd.read_parquet(search_dir / "trials.parquet")
    chosen = trials.set_index("trial_id").loc[out.stdout.split()[2]]
    assert chosen["accuracy"] == trials[trials["status"] == "complete"]["accuracy"].max()
    export = tmp_path / "export"
    assert {"adapter_config.json", "adapter_model.safetensors", "reproduce.yaml", "trial.json"} <= {
        p.name for p in export.iterdir()
    }
    reproduce = yaml.safe_load((export / "reproduce.yaml").read_text())
    assert reproduce["space"]["candidates"][0]["peft_config"] == json.loads(chosen["peft_config"])

    facts = json.loads((search_dir / "run.json").read_text())
    held_out = pd.read_parquet(search_dir / "data" / "eval.parquet").to_dict("records")
    data = tokenize(
        Splits(train=[], eval=held_out, label_names=facts["label_names"]),
        AutoTokenizer.from_pretrained(tiny_bert),
        "sequence-classification",
        cfg.training.max_seq_length,
    )
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert, num_labels=3, ignore_mismatched_sizes=True
    )
    model = PeftModel.from_pretrained(base, str(export))
    result = evaluate(model, data, "sequence-classification", 8, torch.device("cpu"))
    assert result.accuracy == pytest.approx(chosen["accuracy"])
    assert result.metrics()["accuracy_ci_low"] == pytest.approx(chosen["accuracy_ci_low"])

    # An impossible budget: nothing chosen, exit 3, nothing exported.
    none = subprocess.run(
        [sys.executable, "-m", "peft_search", "best", str(search_dir), "--max-params", "1"],
        capture_output=True,
        text=True,
    )
    assert none.returncode == 3 and "No trial chosen" in none.stdout
