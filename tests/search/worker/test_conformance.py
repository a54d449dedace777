"""Every registered method family: sample -> PEFT config -> injection -> one training step, for both tasks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from peft import get_peft_config, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from peft_search.search.worker.training import run_trial
from peft_search.spaces import registered_methods
from tests.helpers import prepared, sample_trial

CASES = [(m, {}) for m, s in sorted(registered_methods().items()) if s.library == "peft"] + [
    ("lora", {"lora.use_dora": True}),
    ("lora", {"lora.use_rslora": True}),
    ("lora", {"lora.layers": "top-half", "lora.targets": "attention+mlp"}),
    ("lora", {"lora.layers": "every-other", "lora.targets": "all-linear"}),
]


@pytest.fixture(scope="module")
def seq_cls(tiny_bert, classification_csv, tmp_path_factory):
    return prepared(tiny_bert, classification_csv, "sequence-classification", tmp_path_factory.mktemp("cls"))


@pytest.fixture(scope="module")
def causal(tiny_llama, qa_jsonl, tmp_path_factory):
    return prepared(tiny_llama, qa_jsonl, "causal-lm", tmp_path_factory.mktemp("clm"))


def _fresh_peft(model_path, task, num_labels, peft_config):
    torch.manual_seed(0)
    if task == "sequence-classification":
        base = AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=num_labels, ignore_mismatched_sizes=True
        )
    else:
        base = AutoModelForCausalLM.from_pretrained(model_path)
    return get_peft_model(base, get_peft_config(dict(peft_config)))


def _check(setup, method, fixed):
    prep, settings = setup
    trial = sample_trial(prep, method, **fixed)
    assert trial.method == method
    assert trial.peft_config["peft_type"] == registered_methods()[method].peft_type
    metrics, adapter_dir = run_trial(trial, settings, prep.data, device=torch.device("cpu"))
    try:
        assert metrics["train_steps"] == 1 and metrics["samples_per_s"] > 0
        assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["eval_loss"] == metrics["eval_loss"]
        assert metrics["peak_memory_kind"] == "cpu_rss" and metrics["peak_memory_bytes"] > 0

        # The recorded count is PEFT's own count for the same model and config.
        fresh = _fresh_peft(settings.model_path, settings.task, prep.data.num_labels, trial.peft_config)
        assert metrics["trainable_params"] == fresh.get_nb_trainable_parameters()[0]
        assert metrics["total_params"] == fresh.get_nb_trainable_parameters()[1]

        # Only the adapter is saved, and one real optimizer step changed it.
        files = {p.name for p in Path(adapter_dir.name).iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
        assert metrics["adapter_bytes"] < 0.5 * 4 * metrics["total_params"]
        saved = load_file(str(Path(adapter_dir.name) / "adapter_model.safetensors"))
        initial = get_peft_model_state_dict(fresh)
        shared = [k for k in saved if k in initial and saved[k].shape == initial[k].shape]
        assert shared, f"no comparable adapter tensors: {sorted(saved)[:5]}"
        assert any(not torch.equal(saved[k], initial[k].to(saved[k].dtype)) for k in shared)
        return trial
    finally:
        adapter_dir.cleanup()


@pytest.mark.parametrize(
    "method,fixed", CASES, ids=[f"{m}{'-' + '-'.join(map(str, f.values())) if f else ''}" for m, f in CASES]
)
def test_sequence_classification(seq_cls, method, fixed):
    trial = _check(seq_cls, method, fixed)
    if fixed.get("lora.use_dora"):
        assert trial.peft_config["use_dora"] is True
    if fixed.get("lora.use_rslora"):
        assert trial.peft_config["use_rslora"] is True
    if fixed.get("lora.layers") == "top-half":
        assert trial.peft_config["layers_to_transform"] == [1]
    if fixed.get("lora.layers") == "every-other":
        assert trial.peft_config["layers_to_transform"] == [0]


@pytest.mark.parametrize(
    "method,fixed", CASES, ids=[f"{m}{'-' + '-'.join(map(str, f.values())) if f else ''}" for m, f in CASES]
)
def test_causal_lm(causal, method, fixed):
    _check(causal, method, fixed)


def test_causal_lm_open_answers_are_generated(causal, qa_jsonl, monkeypatch):
    """Beyond the closed-set limit, accuracy compares greedily generated answers token for token."""
    from transformers import AutoTokenizer

    import peft_search.search.inputs.data as data_mod
    from peft_search.search.inputs.data import load_records, split_causal, tokenize

    prep, settings = causal
    monkeypatch.setattr(data_mod, "MAX_CLOSED_ANSWERS", 1)
    tok = AutoTokenizer.from_pretrained(settings.model_path)
    splits = split_causal(
        load_records(qa_jsonl), prompt="prompt", answer="answer", train_size=8, eval_size=6, seed=0
    )
    open_data = tokenize(splits, tok, "causal-lm", max_length=24)
    assert open_data.answer_ids == [] and all("label" not in r for r in open_data.eval)
    trial = sample_trial(prep, "lora")
    metrics, adapter_dir = run_trial(trial, settings, open_data, device=torch.device("cpu"))
    adapter_dir.cleanup()
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["eval_loss"] > 0


def test_diverged_loss_fails_the_trial_without_a_per_step_sync(seq_cls):
    """The Trainer keeps the loss on the device between logging steps; a non-finite loss logged there (or in the
    final average) fails the trial."""
    from peft_search.search.worker.trainer import CURVE_POINTS

    prep, settings = seq_cls
    trial = dataclasses.replace(sample_trial(prep, "lora"), learning_rate=1e30)
    steps = 3 * CURVE_POINTS + 1  # logging every 3 steps
    with pytest.raises(FloatingPointError, match=r"non-finite by step (\d+)") as err:
        run_trial(trial, dataclasses.replace(settings, steps=steps), prep.data, device=torch.device("cpu"))
    step = int(err.value.args[0].rsplit(" ", 1)[1])
    assert step % 3 == 0 and step < steps, step  # found at a logging step, long before the end
