"""4-bit and 8-bit trials really run bitsandbytes layers (on CPU here, on CUDA where there is one)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from peft_search.search.inputs.modeling import inject_adapter, load_base_model, quantized_layer_types
from peft_search.search.worker.training import run_trial
from peft_search.spaces import registered_methods
from tests.helpers import prepared, sample_trial

EXPECTED = {"int8": "Linear8bitLt", "nf4": "Linear4bit", "fp4": "Linear4bit"}


@pytest.fixture(scope="module")
def seq_cls(tiny_bert, classification_csv, tmp_path_factory):
    return prepared(tiny_bert, classification_csv, "sequence-classification", tmp_path_factory.mktemp("q"))


@pytest.mark.parametrize("level", ["int8", "nf4", "fp4"])
def test_quantized_layers_are_bitsandbytes(seq_cls, level):
    prep, settings = seq_cls
    model = load_base_model(
        settings.model_path, settings.task, num_labels=3, quantization=level, device=torch.device("cpu")
    )
    assert EXPECTED[level] in quantized_layer_types(model)
    query = model.bert.encoder.layer[0].attention.self.query
    assert type(query).__name__ == EXPECTED[level]
    if level != "int8":
        assert query.weight.quant_state.quant_type == level
    # The task head stays in full precision so PEFT can train it.
    assert type(model.classifier).__name__ == "Linear"
    peft_model = inject_adapter(model, sample_trial(prep, "lora", **{"lora.layers": "all"}).peft_config)
    wrapped = peft_model.base_model.model.bert.encoder.layer[0].attention.self.query
    assert type(wrapped.base_layer).__name__ == EXPECTED[level]


@pytest.mark.parametrize("level", ["int8", "nf4"])
@pytest.mark.parametrize("method", ["lora", "adalora", "vera", "ia3", "bitfit", "prompt_tuning"])
def test_quantized_trial_trains(seq_cls, level, method):
    prep, settings = seq_cls
    trial = sample_trial(prep, method, quantization=level)
    assert trial.quantization == level
    metrics, adapter_dir = run_trial(trial, settings, prep.data, device=torch.device("cpu"))
    adapter_dir.cleanup()
    assert metrics["train_steps"] == 1 and 0 <= metrics["accuracy"] <= 1
    assert metrics["trainable_params"] > 0


def test_infeasible_combinations_are_not_offered(seq_cls):
    prep, _ = seq_cls
    for name in ("loha", "lokr"):
        assert registered_methods()[name].quantization == frozenset({"none", "int8"})
    # DoRA is withheld on 8-bit bases even when the sampler is pinned to ask for it.
    trial = sample_trial(prep, "lora", quantization="int8", **{"lora.use_dora": True})
    assert trial.peft_config["use_dora"] is False
    assert sample_trial(prep, "lora", quantization="nf4", **{"lora.use_dora": True}).peft_config["use_dora"]


@pytest.mark.gpu
def test_qlora_on_cuda(seq_cls):
    prep, settings = seq_cls
    trial = dataclasses.replace(sample_trial(prep, "lora"), quantization="nf4")
    metrics, adapter_dir = run_trial(trial, settings, prep.data, device=torch.device("cuda"))
    adapter_dir.cleanup()
    assert metrics["peak_memory_kind"] == "gpu_allocated" and metrics["peak_memory_bytes"] > 0


def test_a_head_loaded_at_the_checkpoints_size_is_refitted(seq_cls):
    """transformers <= 5.22 keeps the checkpoint's 2-way head when a quantized model is loaded for 3 labels."""
    from torch import nn

    from peft_search.search.inputs.modeling import fit_head

    prep, settings = seq_cls
    model = load_base_model(
        settings.model_path, settings.task, num_labels=3, quantization="nf4", device=torch.device("cpu")
    )
    model.classifier = nn.Linear(model.classifier.in_features, 2)  # what those versions leave
    fit_head(model, 3)
    assert model.classifier.weight.shape == (3, model.classifier.in_features)
    batch = {"input_ids": torch.tensor([[2, 5, 6]]), "labels": torch.tensor([2])}
    assert model(**batch).logits.shape == (1, 3)


def test_narrow_4bit_layers_stay_off_the_packed_cpu_path(seq_cls):
    """bitsandbytes' AVX512-BF16 inference repacking fails on layers narrower than a block (64): evaluation of
    this tiny model would fail on such CPUs, so those layers keep the generic path; wide ones keep theirs."""
    from bitsandbytes.functional import has_avx512bf16

    _, settings = seq_cls
    model = load_base_model(
        settings.model_path, settings.task, num_labels=3, quantization="nf4", device=torch.device("cpu")
    )
    layers = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert layers
    for m in layers:
        narrow = m.weight.quant_state.shape[1] % m.weight.quant_state.blocksize != 0
        assert m.support_avx512bf16_for_cpu == (has_avx512bf16() and not narrow), m
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[2, 5, 6]])).logits.shape == (1, 3)
