"""Loading the base model (at a quantization level), inspecting it without weights, and injecting adapters."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peft_search.search.errors import InfeasibleTrialError
from peft_search.search.inputs import adapterhub

_NORM_TYPES = ("LayerNorm", "RMSNorm")
# Task heads stay in full precision: PEFT trains them (``modules_to_save``) and bitsandbytes cannot.
SKIP_QUANTIZATION = ["classifier", "score", "pooler", "lm_head"]


@dataclass(frozen=True)
class ModelFacts:
    """What the search space needs to know about a model, read from its config alone."""

    model_type: str
    num_layers: int
    linear_modules: list[str]
    norm_modules: list[str]
    max_positions: int | None
    widest_rank: int = 0
    """The largest ``min(in, out)`` of its weight matrices (linear layers, GPT-2's ``Conv1D``, embeddings, convolutions
    flattened): no layer's update has a higher rank."""


def _auto_class(task: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if task == "sequence-classification" else AutoModelForCausalLM


def meta_model(path: str, task: str, num_labels: int = 2, revision: str | None = None) -> nn.Module:
    """The model's architecture on the meta device, from ``config.json`` alone: no weights read, no memory used."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, revision=revision, num_labels=num_labels)
    with torch.device("meta"):
        return _auto_class(task).from_config(config)


def model_facts(model: nn.Module) -> ModelFacts:
    config = model.config
    linear, norms, widest = [], [], 0
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)  # Linear, GPT-2's Conv1D, Embedding, convolutions
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            widest = max(widest, min(weight.shape[0], weight[0].numel()))
        if isinstance(module, nn.Linear):
            linear.append(name)
        elif any(t in type(module).__name__ for t in _NORM_TYPES):
            norms.append(name)
    num_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    return ModelFacts(
        model_type=config.model_type,
        num_layers=int(num_layers),
        linear_modules=linear,
        norm_modules=norms,
        max_positions=getattr(config, "max_position_embeddings", None),
        widest_rank=widest,
    )


def quantization_kwargs(level: str, compute_dtype: torch.dtype) -> dict[str, Any] | None:
    """``BitsAndBytesConfig``'s arguments for a quantization level (JSON values: an export writes them), or None
    for an unquantized model."""
    if level == "none":
        return None
    if level == "int8":
        return {"load_in_8bit": True, "llm_int8_skip_modules": list(SKIP_QUANTIZATION)}
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": level,
        "bnb_4bit_compute_dtype": str(compute_dtype).removeprefix("torch."),
        "bnb_4bit_use_double_quant": False,
        "llm_int8_skip_modules": list(SKIP_QUANTIZATION),
    }


def quantization_config(level: str, compute_dtype: torch.dtype):
    """The ``BitsAndBytesConfig`` for a quantization level, or None for an unquantized model."""
    kwargs = quantization_kwargs(level, compute_dtype)
    if kwargs is None:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**kwargs)


def precision_dtype(precision: str) -> torch.dtype:
    """``training.precision`` as the dtype the base model is loaded in."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def load_base_model(
    path: str,
    task: str,
    *,
    num_labels: int,
    quantization: str,
    device: torch.device,
    precision: str = "fp32",
    pad_token_id: int | None = None,
    revision: str | None = None,
    gradient_checkpointing: bool = False,
) -> nn.Module:
    dtype = precision_dtype(precision)
    kwargs: dict[str, Any] = {"dtype": dtype, "revision": revision}
    if task == "sequence-classification":
        # The classification head is new for this task: a checkpoint's head of another size is replaced.
        kwargs.update(num_labels=num_labels, ignore_mismatched_sizes=True)
    qconfig = quantization_config(quantization, dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = {"": device}
    model = _auto_class(task).from_pretrained(path, **kwargs)
    if task == "sequence-classification":
        fit_head(model, num_labels)
    if pad_token_id is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_token_id
    if qconfig is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
        if device.type == "cpu":
            unpacked_narrow_layers(model)
    else:
        model.to(device)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable()
    return model


@contextlib.contextmanager
def generic_4bit_cpu_path(model: nn.Module) -> Iterator[None]:
    """Evaluate part-way through training without bitsandbytes' AVX512-BF16 CPU inference repacking.

    bitsandbytes (0.50) repacks a 4-bit weight for its CPU inference kernel at the first no-grad forward in eval
    mode and never unpacks it when training resumes: the next training forward takes the inference kernel and
    fails (an in-place bias add on a tensor autograd tracks). Early stopping evaluates at rungs and trains on, so
    its evaluations keep the generic path; the final evaluation, after the last step, may repack.
    """
    layers = [m for m in model.modules() if getattr(m, "support_avx512bf16_for_cpu", False)]
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    try:
        yield
    finally:
        for m in layers:
            m.support_avx512bf16_for_cpu = True


def unpacked_narrow_layers(model: nn.Module) -> None:
    """Keep 4-bit layers narrower than a quantization block off bitsandbytes' AVX512-BF16 CPU inference path.

    On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a 4-bit weight at its first no-grad forward, one block of
    ``blocksize`` inputs per row; a layer with fewer (or a non-multiple of) inputs fails there with a shape error,
    so evaluation would fail where training worked. Those layers use its generic CPU path instead.
    """
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if (
            state is not None
            and hasattr(module, "support_avx512bf16_for_cpu")
            and state.shape[1] % state.blocksize
        ):
            module.support_avx512bf16_for_cpu = False


def fit_head(model: nn.Module, num_labels: int) -> None:
    """Give the classification head ``num_labels`` outputs where loading kept the checkpoint's.

    transformers up to 5.22 does so when a quantized model is loaded with ``ignore_mismatched_sizes``: the head
    (left unquantized) keeps the checkpoint's weight of another size, and the first loss fails on a shape error.
    The head is new for this task either way, so it is initialised afresh, as transformers would have done.
    """
    for name in SKIP_QUANTIZATION[:2]:  # "classifier", "score"
        head = getattr(model, name, None)
        if head is None:
            continue
        linear = head if isinstance(head, nn.Linear) else getattr(head, "out_proj", None)
        if not isinstance(linear, nn.Linear) or linear.weight.shape[0] == num_labels:
            return
        w = linear.weight
        fresh = nn.Linear(
            w.shape[1], num_labels, bias=linear.bias is not None, device=w.device, dtype=w.dtype
        )
        model._init_weights(fresh)
        if head is linear:
            setattr(model, name, fresh)
        else:
            head.out_proj = fresh
        return


def inject_adapter(model: nn.Module, peft_config: dict[str, Any]):
    """Wrap ``model`` with the adapter described by a PEFT ``adapter_config.json``-shaped dict (an AdapterHub
    adapter's: ``search.inputs.adapterhub``)."""
    from peft import get_peft_config, get_peft_model

    if adapterhub.is_adapterhub(peft_config):
        return adapterhub.inject(model, peft_config)
    try:
        config = get_peft_config(dict(peft_config))
        return get_peft_model(model, config)
    except (ValueError, TypeError, NotImplementedError, KeyError) as err:
        raise InfeasibleTrialError(f"{type(err).__name__}: {err}") from err


def quantized_layer_types(model: nn.Module) -> set[str]:
    """Names of the bitsandbytes layer classes inside ``model`` (empty when unquantized)."""
    return {type(m).__name__ for m in model.modules() if type(m).__module__.startswith("bitsandbytes")}
