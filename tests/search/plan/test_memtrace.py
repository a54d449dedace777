"""The meta-device trace of a training step against the same step run for real on CPU, byte for byte.

Both count the same thing (the bytes of every storage the step allocates while it is alive), so they agree to
within a few percent; the GPU comparison against the allocator's peak is in benchmarks/RESULTS.md."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from peft_search.search.inputs.modeling import (
    SKIP_QUANTIZATION,
    inject_adapter,
    load_base_model,
    quantized_layer_types,
)
from peft_search.search.plan.memtrace import LiveBytes, step_peak_bytes

B, S = 4, 48

LORA_QV = {"peft_type": "LORA", "r": 4, "target_modules": ["q_proj", "v_proj"]}
CASES = [
    ("causal-lm", LORA_QV, False),
    ("causal-lm", {"peft_type": "LORA", "r": 4, "target_modules": "all-linear"}, False),
    ("causal-lm", {"peft_type": "LORA", "r": 4, "target_modules": "all-linear"}, True),
    (
        "causal-lm",
        {"peft_type": "IA3", "target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
        False,
    ),
    ("causal-lm", {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 8}, False),
    # VB-LoRA checks its logits for infinity on every step: the trace answers that test (none) and goes on.
    (
        "causal-lm",
        {
            "peft_type": "VBLORA",
            "r": 4,
            "num_vectors": 32,
            "vector_length": 8,
            "target_modules": ["q_proj", "v_proj"],
        },
        False,
    ),
    ("sequence-classification", {"peft_type": "LORA", "r": 4, "target_modules": ["query", "value"]}, False),
    ("sequence-classification", {"peft_type": "LORA", "r": 4, "target_modules": ["query", "value"]}, True),
]
QUANTIZED = [
    ("causal-lm", LORA_QV, "nf4"),
    ("causal-lm", {"peft_type": "LORA", "r": 4, "target_modules": "all-linear"}, "int8"),
    ("sequence-classification", {"peft_type": "LORA", "r": 4, "target_modules": ["query", "value"]}, "nf4"),
]


def _path(task, tiny_bert, tiny_llama):
    return tiny_llama if task == "causal-lm" else tiny_bert


def _real_step_peak(model, task) -> int:
    torch.manual_seed(0)
    ids = torch.randint(5, 30, (B, S))
    labels = ids if task == "causal-lm" else torch.zeros(B, dtype=torch.long)
    mode = LiveBytes([*model.parameters(), *model.buffers()])
    with mode:
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        del loss
    return mode.peak


@pytest.mark.parametrize(
    ("task", "peft", "checkpointing", "quantization"),
    [(*case, "none") for case in CASES] + [(t, p, False, q) for t, p, q in QUANTIZED],
)
def test_traced_step_matches_the_real_step(tiny_bert, tiny_llama, task, peft, checkpointing, quantization):
    path = _path(task, tiny_bert, tiny_llama)
    peft = {**peft, "task_type": "CAUSAL_LM" if task == "causal-lm" else "SEQ_CLS"}
    auto = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    config = AutoConfig.from_pretrained(path, num_labels=3)
    with torch.device("meta"):
        meta = auto.from_config(config)

    def inject(model):
        return inject_adapter(model, peft)

    traced = step_peak_bytes(
        meta,
        inject,
        task=task,
        quantization=quantization,
        batch_size=B,
        seq_len=S,
        precision="fp32",
        gradient_checkpointing=checkpointing,
        skip=SKIP_QUANTIZATION,
        device="cpu",
    )
    real = load_base_model(
        path,
        task,
        num_labels=3,
        quantization=quantization,
        device=torch.device("cpu"),
        gradient_checkpointing=checkpointing,
    )
    assert (quantization == "none") == (not quantized_layer_types(real))
    real = inject(real)
    real.train()
    measured = _real_step_peak(real, task)
    assert measured > 0
    assert abs(traced / measured - 1) < 0.05, (traced, measured)
