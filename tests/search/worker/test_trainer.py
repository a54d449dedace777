"""Trials train with ``transformers.Trainer``: ``training:`` takes TrainingArguments fields, accumulation keeps the
optimisation of the full batch, and every trial records its learning curve."""

from __future__ import annotations

import math

import pytest
import torch

from peft_search.search.loop.prepare import prepare
from peft_search.search.results.records import CURVE_KEY
from peft_search.search.settings.trial import TrialConfig
from peft_search.search.worker.training import run_trial
from tests.helpers import tiny_config

LORA = {
    "peft_type": "LORA",
    "task_type": "SEQ_CLS",
    "r": 4,
    "lora_dropout": 0.0,
    "target_modules": ["query", "value"],
}


def _trial(model, data, tmp_path, **training):
    cfg = tiny_config(
        model,
        data,
        results_dir=str(tmp_path),
        training={"max_steps": 6, "batch_size": 8, "warmup_ratio": 0.0, **training},
    )
    prep = prepare(cfg)
    trial = TrialConfig("lora", "none", LORA, 0.02)
    metrics, adapter = run_trial(trial, prep.settings, prep.data, device=torch.device("cpu"))
    from safetensors.torch import load_file

    weights = load_file(f"{adapter.name}/adapter_model.safetensors")
    adapter.cleanup()
    return metrics, weights


def test_gradient_accumulation_trains_as_the_full_batch(bert_without_dropout, classification_csv, tmp_path):
    """Two micro-batches of 4 accumulated: the same steps as batches of 8 (the loss is not rescaled twice)."""
    one, w1 = _trial(bert_without_dropout, classification_csv, tmp_path / "a")
    two, w2 = _trial(bert_without_dropout, classification_csv, tmp_path / "b", gradient_accumulation_steps=2)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], abs=1e-5)
    for key in w1:
        assert (w1[key] - w2[key]).abs().max() < 1e-5, key
    assert one[CURVE_KEY]["loss"] == pytest.approx(two[CURVE_KEY]["loss"], abs=1e-5)


def test_training_arguments_reach_the_trainer(tiny_bert, classification_csv, tmp_path):
    """A cosine schedule with warmup and clipping, as the Trainer runs them: read back from the learning curve."""
    metrics, _ = _trial(
        tiny_bert,
        classification_csv,
        tmp_path,
        lr_scheduler_type="cosine",
        max_grad_norm=0.5,
        warmup_ratio=0.5,
        logging_steps=1,
        max_steps=8,
    )
    curve = metrics[CURVE_KEY]
    assert curve["step"] == list(range(1, 9))
    assert all(math.isfinite(x) and x > 0 for x in curve["loss"])
    lr = curve["learning_rate"]
    # Linear warmup over 4 steps (lr at step k logged after k optimizer steps), then a cosine decay towards 0.
    assert lr[:4] == pytest.approx([0.02 * k / 4 for k in range(4)], abs=1e-9)
    assert lr[4] == pytest.approx(0.02) and lr[-1] == pytest.approx(
        0.02 * 0.5 * (1 + math.cos(math.pi * 3 / 4))
    )
    assert len(curve["grad_norm"]) == 8


def test_rung_evaluations_join_the_curve(tiny_bert, classification_csv, tmp_path):
    cfg = tiny_config(
        tiny_bert,
        classification_csv,
        results_dir=str(tmp_path),
        training={"max_steps": 6, "batch_size": 4},
        search={"early_stopping": {"rule": "asha", "grace_steps": 2, "reduction_factor": 2, "eval_size": 4}},
    )
    prep = prepare(cfg)
    reported = []
    trial = TrialConfig("lora", "none", LORA, 0.01)
    metrics, adapter = run_trial(
        trial, prep.settings, prep.data, device=torch.device("cpu"), on_rung=reported.append
    )
    adapter.cleanup()
    curve = metrics[CURVE_KEY]
    assert curve["eval_step"] == [r["rung_step"] for r in reported] == [2, 4]
    assert curve["eval_accuracy"] == [r["accuracy"] for r in reported]
    assert curve["step"] == list(range(1, 7))


def test_settings_keep_the_search_s_own_fields(tiny_bert, classification_csv, tmp_path):
    """A config round trip (``with_config``) keeps the TrainingArguments fields as given."""
    cfg = tiny_config(
        tiny_bert,
        classification_csv,
        results_dir=str(tmp_path),
        training={"max_grad_norm": [0.3, 1.0], "lr_scheduler_type": "cosine"},
    )
    settings = prepare(cfg).settings
    again = settings.with_config(budget={"max_memory": 10**12})
    assert again.training.arguments() == settings.training.arguments()
    assert dict(again.training.arguments().fixed) == {"lr_scheduler_type": "cosine"}
