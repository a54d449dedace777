"""Peak memory of one training step, traced on the meta device: no weights, no accelerator, a second or less.

The candidate is built as the trial builds it (dtypes, bitsandbytes' behaviour, the PEFT adapter, gradient
checkpointing) with every tensor on the meta device, then one forward and backward pass runs under a dispatch mode
that adds up the bytes of every storage while it is alive. The peak over the step, beyond the weights, is what the
step needs for activations kept for the backward pass, their gradients, the adapter's gradients and the transient
tensors in between: the terms a closed formula can only approximate (which layers save their inputs depends on the
adapter's targets; PEFT keeps adapters in fp32; QLoRA upcasts the unquantized weights and so the hidden states).

Two parts of a real step cannot run on meta tensors and are stood in for, with the memory they have on a device:
fused attention (``scaled_dot_product_attention``: flash / memory-efficient kernels keep the output and a
log-sum-exp, not the score matrix) and bitsandbytes' 4-bit / 8-bit matmuls (they keep their input and
dequantise the weight for each product).
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

_NON_FINITE_TESTS = {torch.ops.aten.isinf.default, torch.ops.aten.isnan.default}
_REDUCTIONS = {torch.ops.aten.any.default, torch.ops.aten.all.default, torch.ops.aten.any.dim}


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages created inside the mode while they are alive, and their peak."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._non_finite: WeakIdKeyDictionary = WeakIdKeyDictionary()
        """Storages holding the answer of a test for NaN or infinity: false on a traced step."""
        # Storages that exist already (weights) are not the step's: views of them (transposes) cost nothing.
        for t in exclude:
            self._seen[t.untyped_storage()] = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        scalar = func is torch.ops.aten._local_scalar_dense.default
        if scalar and args[0].device.type == "meta" and args[0].dtype is torch.bool:
            # A data-dependent test on meta tensors: the traced rows are full and unpacked, so transformers'
            # mask checks ("is the padding mask all ones", "are the positions one sequence") hold; a check for
            # NaN or infinity (VB-LoRA's on its logits) finds none.
            return args[0].untyped_storage() not in self._non_finite
        out = func(*args, **(kwargs or {}))
        if func in _NON_FINITE_TESTS or (
            func in _REDUCTIONS and args and args[0].untyped_storage() in self._non_finite
        ):
            self._non_finite[out.untyped_storage()] = True
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage not in self._seen:
                    nbytes = storage.nbytes()
                    self._seen[storage] = nbytes
                    self.live += nbytes
                    weakref.finalize(storage, self._free, nbytes)
        self.peak = max(self.peak, self.live)
        return out


class _FusedAttention(torch.autograd.Function):
    """What a fused attention kernel keeps and makes: its output, a log-sum-exp per query, and q, k, v gradients."""

    @staticmethod
    def forward(ctx, q, k, v):
        b, h, s, _ = q.shape  # the kernels write (batch, seq, heads, dim): the usual transpose back is free
        out = q.new_empty((b, s, h, v.shape[-1])).transpose(1, 2)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


_SDPA = torch.nn.functional.scaled_dot_product_attention


def _sdpa_for(device: str) -> Callable:
    """``scaled_dot_product_attention`` as it behaves on ``device``: fused kernels keep no score matrix; where
    PyTorch falls back to the math path, that path is traced as it is."""

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        # CPU: math with dropout. CUDA: the fused kernels take fp16 / bf16 only (fp32 is what QLoRA's upcast
        # hidden states are), so fp32 attention runs the math path, scores and all.
        if (device == "cpu" and dropout_p > 0) or (device != "cpu" and query.dtype == torch.float32):
            return _SDPA(
                query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa
            )
        return _FusedAttention.apply(query, key, value)

    return sdpa


class _FrozenMatmul(torch.autograd.Function):
    """bitsandbytes' product with a frozen quantized weight: the weight is dequantised to ``weight``'s dtype for
    each product (a transient copy), the input is cast to it, and the input is kept for the backward pass only
    where bitsandbytes keeps it (8-bit ``MatMul8bitLt`` does, 4-bit ``MatMul4Bit`` does not)."""

    @staticmethod
    def forward(ctx, x, weight, bias, keep_input, dtype):
        ctx.weight, ctx.dtype, ctx.compute = weight, x.dtype, dtype
        if keep_input:
            ctx.save_for_backward(x)
        out = x.to(dtype) @ weight.to(dtype, copy=True).t()
        return out if bias is None else out + bias.to(out.dtype)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.to(ctx.compute) @ ctx.weight.to(ctx.compute, copy=True)
        return grad.to(ctx.dtype), None, None, None, None


class QuantizedLinear(nn.Linear):
    """A bitsandbytes layer's memory behaviour on the meta device. 4-bit (``Linear4bit``) casts its input to the
    compute dtype, multiplies there and casts back. 8-bit (``Linear8bitLt``) keeps its input as it comes; on a GPU
    it multiplies in fp16 (through an int8 copy of the input), on CPU in the input's dtype."""

    def __init__(self, linear: nn.Linear, level: str, compute_dtype: torch.dtype, device: str) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.level, self.device_type = level, device
        dtype = torch.float16 if level == "int8" else compute_dtype
        self.weight = nn.Parameter(
            torch.empty_like(linear.weight, dtype=dtype, device="meta"), requires_grad=False
        )
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.to("meta"), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype, w = x.dtype, self.weight
        if self.level != "int8":
            return _FrozenMatmul.apply(x.to(w.dtype), w, self.bias, False, w.dtype).to(dtype)
        if self.device_type == "cpu":
            return _FrozenMatmul.apply(x, w, self.bias, True, dtype)
        torch.empty_like(x, dtype=torch.int8)  # the row-wise int8 copy of the input (freed after the product)
        return _FrozenMatmul.apply(x, w, self.bias, True, torch.float16).to(dtype)


def quantized_linear_names(model: nn.Module, skip: list[str]) -> list[str]:
    """The linear layers bitsandbytes quantizes: every ``nn.Linear`` outside the task heads in ``skip``."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and not any(s in name.split(".") for s in skip)
    ]


def _as_trained(
    base: nn.Module, quantization: str, dtype: torch.dtype, skip: list[str], device: str = "cuda"
) -> nn.Module:
    """A meta copy of ``base`` with the dtypes and layers a trial's model has before its adapter."""
    model = copy.deepcopy(base)
    if quantization == "none":
        return model.to(dtype)
    for name in quantized_linear_names(model, skip):
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, QuantizedLinear(getattr(owner, child), quantization, dtype, device))
    # PEFT's prepare_model_for_kbit_training: every weight that is not quantized is trained against in fp32.
    for m in model.modules():
        if not isinstance(m, QuantizedLinear):
            for p in m.parameters(recurse=False):
                p.data = p.data.to(torch.float32)
    return model


class StepPeaks(NamedTuple):
    """Peak bytes during the forward pass, and during the backward pass (from what the forward left alive)."""

    forward: int
    backward: int


def step_peak_bytes(*args: Any, **kwargs: Any) -> int:
    """Peak bytes one training step allocates beyond the model's weights (``step_peaks``' larger phase)."""
    return max(step_peaks(*args, **kwargs))


def step_peaks(
    base: nn.Module,
    inject: Callable[[nn.Module], nn.Module],
    *,
    task: str,
    quantization: str,
    batch_size: int,
    seq_len: int,
    precision: str,
    gradient_checkpointing: bool,
    skip: list[str],
    device: str = "cuda",
) -> StepPeaks:
    """Peak bytes of one training step's forward and backward passes beyond the model's weights (see the module
    docstring), on a ``device`` of this type ("cuda" or "cpu")."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = _as_trained(base, quantization, dtype, skip, device)
    for p in model.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if quantization != "none":
            model.enable_input_require_grads()
    model = inject(model).to("meta")
    model.train()
    ids = torch.zeros((batch_size, seq_len), dtype=torch.long, device="meta")
    labels = ids if task == "causal-lm" else torch.zeros(batch_size, dtype=torch.long, device="meta")
    inputs: dict[str, Any] = {"input_ids": ids, "labels": labels}  # no mask: full rows, the longest batch
    existing = [*model.parameters(), *model.buffers()]
    mode = LiveBytes(existing)
    with patched(torch.nn.functional, "scaled_dot_product_attention", _sdpa_for(device)), mode:
        loss = model(**inputs).loss
        forward, mode.peak = mode.peak, mode.live
        loss.backward()
        del loss
    return StepPeaks(forward, mode.peak)


@contextlib.contextmanager
def patched(owner: Any, name: str, value: Any):
    """``owner.name`` is ``value`` inside the block, and what it was again after it."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)
