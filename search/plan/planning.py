"""Planning before spending: exact parameter counts, adapter size and a peak-memory estimate, without weights.

The base model is built on the meta device from its ``config.json`` alone and the adapter is injected by PEFT
itself, so trainable and total parameter counts are PEFT's own, for any model size, in seconds.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from peft_search.cluster import worker_env
from peft_search.search.errors import ConfigError, InfeasibleTrialError
from peft_search.search.inputs import adapterhub
from peft_search.search.inputs.candidates import check_space_fits
from peft_search.search.inputs.data import DatasetError, split_dataset
from peft_search.search.inputs.modeling import SKIP_QUANTIZATION, inject_adapter, meta_model, model_facts
from peft_search.search.plan.baseline import RuntimeBaseline
from peft_search.search.plan.depth import Counts, counts_by_depth, step_by_depth
from peft_search.search.plan.heap import HeapModel, allocator_name, cached_heap
from peft_search.search.plan.memtrace import StepPeaks, patched, quantized_linear_names, step_peaks
from peft_search.search.plan.pool import map_forked, resolve_jobs
from peft_search.search.results.metrics import get_metric
from peft_search.search.results.noise import resolvable_difference
from peft_search.search.settings.space import space_context, space_spec
from peft_search.search.verbosity import verbose
from peft_search.spaces import method_for_peft_type
from peft_search.spaces.sampling import DefineByRun, SpaceSpec

_DTYPE_CODES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
_QUANT_BYTES = {
    # bitsandbytes storage per weight element: int8 values plus one fp32 scale per output row (added below);
    # 4-bit values plus one fp32 absmax per block of 64 (no double quantization).
    "int8": 1.0,
    "nf4": 0.5 + 4 / 64,
    "fp4": 0.5 + 4 / 64,
}


@dataclass(frozen=True)
class Plan:
    """What one candidate costs, before any training."""

    trainable_params: int
    total_params: int
    adapter_bytes: int
    weight_bytes: int
    adapter_state_bytes: int
    activation_bytes: int
    """The training step's own peak: traced on the meta device, or from a formula where tracing fails."""
    runtime_bytes: int
    traced: bool = True
    heap_step_bytes: int = 0
    """What the CPU trials' heap allocator keeps of the training step's freed tensors (``search.plan.heap``; 0 on
    GPU)."""
    heap_load_bytes: int = 0
    """What it keeps after a quantized load (the fp32 weights the quantized ones replaced)."""
    eval_bytes: int = 0
    """What scoring the held-out split adds to the base model, the runtime and the adapter's weights (CPU: measured
    with the heap, what the heap keeps included; 0 on GPU)."""

    @property
    def heap_bytes(self) -> int:
        return self.heap_step_bytes + self.heap_load_bytes

    @property
    def est_peak_memory_bytes(self) -> int:
        """The larger of the two phases: a training step, or scoring the held-out split once training has freed
        the optimizer (the adapter's weights stay)."""
        loaded = self.weight_bytes + self.runtime_bytes
        training = loaded + self.adapter_state_bytes + self.activation_bytes + self.heap_bytes
        return max(training, loaded + self.adapter_bytes + self.eval_bytes)


def safetensors_bytes(state: dict[str, torch.Tensor]) -> int:
    """Exact size of the ``.safetensors`` file holding ``state``, computed from shapes and dtypes alone."""
    # safetensors orders tensors by dtype size (largest first), then by name, and pads its JSON header to 8 bytes.
    items = sorted(state.items(), key=lambda kv: (-kv[1].element_size(), kv[0]))
    header: dict[str, Any] = {}
    offset = 0
    for name, t in items:
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": _DTYPE_CODES.get(t.dtype, "F32"),
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":"))
    padded = math.ceil(len(text.encode()) / 8) * 8
    return len(struct.pack("<Q", 0)) + padded + offset


def _weight_bytes(model: nn.Module, quantization: str, dtype_bytes: int) -> int:
    """Base-model memory at a quantization level: bitsandbytes layers for linear weights, the rest unchanged
    (in fp32 beside quantized layers, as PEFT's ``prepare_model_for_kbit_training`` leaves them)."""
    total = 0
    quantized: set[int] = set()
    if quantization != "none":
        for name in quantized_linear_names(model, SKIP_QUANTIZATION):
            w = model.get_submodule(name).weight
            quantized.add(id(w))
            total += math.ceil(w.numel() * _QUANT_BYTES[quantization])
            if quantization == "int8":
                total += 4 * w.shape[0]
        # PEFT's prepare_model_for_kbit_training upcasts every weight that is not quantized to fp32.
        dtype_bytes = 4
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen or id(p) in quantized:
            continue
        seen.add(id(p))
        total += p.numel() * dtype_bytes
    return total


def _activation_bytes(
    config, batch_size: int, seq_len: int, dtype_bytes: int, checkpointing: bool, causal: bool
) -> int:
    """Tensors kept for the backward pass: Korthikanti et al. 2022, eq. 1 (``sbh(34 + 5as/h)`` bytes per layer
    in 16-bit, scaled to the compute dtype); with checkpointing only each layer's input is kept. A causal LM also
    holds fp32 logits over the vocabulary and their gradient."""
    h = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    a = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 1)
    s, b = seq_len, batch_size
    per_layer = (
        s * b * h * dtype_bytes if checkpointing else s * b * h * (34 + 5 * a * s / h) * dtype_bytes / 2
    )
    logits = 2 * s * b * getattr(config, "vocab_size", 0) * 4 if causal else 0
    return int(layers * per_layer + logits)


@contextlib.contextmanager
def _boft_shapes_only():
    """BOFT builds each layer's permutation matrix (in_features x in_features) element by element from its
    indices, which a meta tensor cannot take and which costs seconds and gigabytes on a large model. Planning needs
    the matrix's shape only (counts, saved tensors), so while PEFT injects, the matrix is made empty."""
    from peft.tuners.boft.layer import BOFTLayer

    def perm2mat(self, indices):
        return torch.empty((len(indices), len(indices)))

    with patched(BOFTLayer, "perm2mat", perm2mat):
        yield


def plan_candidate(
    base: nn.Module,
    peft_config: dict[str, Any],
    *,
    quantization: str,
    batch_size: int,
    seq_len: int,
    precision: str = "fp32",
    gradient_checkpointing: bool = False,
    runtime_bytes: int = 0,
    device: str = "cuda",
    heap: HeapModel | None = None,
) -> Plan:
    """Inject the adapter into a copy of a meta-device ``base`` and account for its cost.

    Raises ``InfeasibleTrialError`` when PEFT refuses the config for this model.
    """
    from peft.utils import get_peft_model_state_dict

    dtype_bytes = 2 if precision == "bf16" else 4
    weights = _weight_bytes(base, quantization, dtype_bytes)
    from peft import get_peft_config

    # Layer adapters are created on the meta device too (moving them there afterwards would turn AdaLoRA's frozen
    # `ranknum` trainable), BOFT's with empty permutation matrices (see _boft_shapes_only). Not the prompt learning
    # methods, whose small encoder and token ids PEFT runs to save the prompt embeddings.
    # AdapterHub's adapters (search.inputs.adapterhub) are counted and traced on the whole model: their layers
    # are placed by leave_out, which the few-block copies of search.plan.depth do not remap.
    hub = adapterhub.is_adapterhub(peft_config)
    real = not hub and get_peft_config(dict(peft_config)).is_prompt_learning

    def injector(config: dict[str, Any]) -> Callable[[nn.Module], nn.Module]:
        def inject(model: nn.Module) -> nn.Module:
            with contextlib.nullcontext() if real else torch.device("meta"), _boft_shapes_only():
                return inject_adapter(model, config)

        return inject

    def count(model: nn.Module, config: dict[str, Any]) -> Counts:
        peft_model = injector(config)(model)
        if hasattr(peft_model, "prompt_encoder"):
            # PEFT moved the encoder beside the meta base: give it real, uninitialised memory again.
            peft_model.prompt_encoder.to_empty(device="cpu")
        trainable, total = peft_model.get_nb_trainable_parameters()
        if hub:  # what its save holds: the adapter's tensors and the head's (all that trains)
            state = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
            return Counts(int(trainable), int(total), state)
        return Counts(int(trainable), int(total), get_peft_model_state_dict(peft_model))

    # Prompt learning adds no per-block modules (and is cheap to inject whole); layer adapters are counted on a
    # few blocks of a deep model (search.plan.depth).
    whole = real or hub
    counts = count(copy.deepcopy(base), peft_config) if whole else counts_by_depth(base, peft_config, count)
    trainable, total, state = counts.trainable, counts.total, counts.state
    causal = peft_config.get("task_type") == "CAUSAL_LM"

    def trace(model: nn.Module, config: dict[str, Any]) -> StepPeaks:
        return step_peaks(
            model,
            injector(config),
            task="causal-lm" if causal else "sequence-classification",
            quantization=quantization,
            batch_size=batch_size,
            seq_len=seq_len,
            precision=precision,
            gradient_checkpointing=gradient_checkpointing,
            skip=SKIP_QUANTIZATION,
            device=device,
        )

    try:
        # One training step traced on the meta device (on a few blocks of a deep model: search.plan.depth):
        # activations, their gradients, the adapter's gradients.
        if hub:
            step = max(trace(base, peft_config))
        else:
            step = step_by_depth(base, peft_config, trace, gradient_checkpointing=gradient_checkpointing)
        # Trainable adapter weights in fp32 and AdamW's two moments (the gradients are in the traced step).
        adapter_state, traced = trainable * 4 * 3, True
    except Exception:  # a model whose forward pass cannot run on meta tensors (data-dependent code)
        step = _activation_bytes(
            base.config, batch_size, seq_len, dtype_bytes, gradient_checkpointing, causal
        )
        adapter_state, traced = trainable * 4 * 4, False
    return Plan(
        trainable_params=int(trainable),
        total_params=int(total),
        adapter_bytes=safetensors_bytes(state),
        weight_bytes=weights,
        adapter_state_bytes=adapter_state,
        activation_bytes=step,
        runtime_bytes=runtime_bytes,
        traced=traced,
        heap_step_bytes=heap.step_bytes(step) if heap is not None and device == "cpu" else 0,
        heap_load_bytes=heap.load_bytes(quantization) if heap is not None and device == "cpu" else 0,
        eval_bytes=heap.eval_bytes(quantization) if heap is not None and device == "cpu" else 0,
    )


__all__ = [
    "InfeasibleTrialError",
    "Plan",
    "meta_model",
    "plan_candidate",
    "safetensors_bytes",
]


def plan_search(
    cfg, *, samples: int = 0, num_labels: int | None = None, seed: int = 0, jobs: int | None = 1
) -> list[dict[str, Any]]:
    """One row per explicit candidate and per sampled config: counts, adapter size and memory estimate.

    ``jobs``: candidates planned side by side in that many forked processes (``None`` or 0: one per CPU).
    """
    import optuna

    workers = resolve_jobs(jobs)
    gpu = cfg.resources.gpus_per_worker > 0
    baseline = None if gpu else RuntimeBaseline()  # measured while the plan runs
    path = cfg.model.resolved_path()
    counted = _checked_labels(cfg)  # before any model is built
    if cfg.model.task == "sequence-classification" and num_labels is None:
        num_labels = counted
    labels = max(num_labels or 2, 2)
    try:
        base = meta_model(path, cfg.model.task, labels, cfg.model.revision)
        facts = model_facts(base)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(
            f"model.name_or_path: cannot read the config of {cfg.model.name_or_path!r} ({first}); give a local "
            "model directory, a Hugging Face model id this machine can reach, or pkg:PACKAGE/DIR"
        ) from None
    check_space_fits(cfg.space, base, facts, cfg.model.task)
    ctx = space_context(cfg, facts, cfg.training.max_steps or 100)
    spec = space_spec(cfg)
    todo: list[dict[str, Any]] = [
        {
            "candidate": c.name,
            "method": method_for_peft_type(c.peft_config["peft_type"]),
            "quantization": c.quantization,
            "peft_config": dict(c.peft_config),
        }
        for c in spec.candidates
    ]
    if samples and spec.methods:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        space = DefineByRun(SpaceSpec(spec.methods, spec.quantization, spec.learning_rate), ctx)
        for _ in range(samples):
            todo.append({k: v for k, v in space(study.ask()).items() if k != "learning_rate"})
    allocator = _cpu_allocator(cfg.resources.cpu_allocator)
    threads = cfg.resources.cpus_per_worker
    heap = None if gpu else cached_heap(cfg, path, allocator, None if threads == "auto" else int(threads))
    # Rows per forward pass on a worker; a searched gradient_accumulation_steps is planned at its fullest batch.
    accumulation = min(cfg.training.arguments().values("gradient_accumulation_steps", 1))
    micro_batch = cfg.training.batch_size // (cfg.resources.num_workers * int(accumulation))

    def plan_one(index: int) -> Plan | str:
        """The candidate's plan, or why PEFT refused it."""
        item = todo[index]
        try:
            with _quiet_planning():
                return plan_candidate(
                    base,
                    item["peft_config"],
                    quantization=item["quantization"],
                    batch_size=micro_batch,
                    seq_len=cfg.training.max_seq_length,
                    precision=cfg.training.precision,
                    gradient_checkpointing=cfg.training.gradient_checkpointing,
                    device="cuda" if gpu else "cpu",
                    heap=heap,
                )
        except InfeasibleTrialError as err:
            return str(err)

    if workers > 1:  # imported once here, not once in each forked worker
        _import_planning_libraries(any(item["quantization"] != "none" for item in todo))
    plans = map_forked(plan_one, len(todo), workers)
    runtime = baseline.bytes() if baseline is not None else 0
    rows = []
    for item, p in zip(todo, plans, strict=True):
        row = {
            "candidate": item["candidate"],
            "method": item["method"],
            "peft_config": item["peft_config"],
            "quantization": item["quantization"],
        }
        if isinstance(p, str):
            rows.append({**row, "error": p})
            continue
        p = replace(p, runtime_bytes=runtime)
        over = []
        if cfg.budget.max_trainable_params and p.trainable_params > cfg.budget.max_trainable_params:
            over.append("max_trainable_params")
        if cfg.budget.max_memory and p.est_peak_memory_bytes > cfg.budget.max_memory:
            over.append("max_memory")
        rows.append(
            {
                **row,
                "trainable_params": p.trainable_params,
                "total_params": p.total_params,
                "adapter_bytes": p.adapter_bytes,
                "est_peak_memory_bytes": p.est_peak_memory_bytes,
                "est_breakdown": {
                    "weights": p.weight_bytes,
                    "adapter_grads_optimizer": p.adapter_state_bytes,
                    "training_step": p.activation_bytes,
                    "runtime": p.runtime_bytes,
                    "heap_step": p.heap_step_bytes,
                    "heap_load": p.heap_load_bytes,
                    "evaluation": p.eval_bytes,
                },
                "memory_kind": "gpu_allocated" if gpu else "cpu_rss",
                "cpu_allocator": None if gpu else allocator,
                "heap_model": None if gpu or heap is None else heap.describe(),
                "step_estimate": "traced" if p.traced else "formula",
                "over_budget": over,
            }
        )
    return rows


def _import_planning_libraries(quantized: bool) -> None:
    import peft.tuners  # noqa: F401
    from peft.utils import get_peft_model_state_dict  # noqa: F401

    if quantized:
        import bitsandbytes  # noqa: F401


@contextlib.contextmanager
def _quiet_planning():
    """Library warnings that say nothing about the plan: BOFT's CUDA kernel is not built on a meta device, its
    butterfly factor of 1 is the config's own, and transformers' deprecations are its own business. ``-v`` shows
    them."""
    import warnings

    with warnings.catch_warnings():
        if not verbose():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message="Failed to load the CUDA extension")
            warnings.filterwarnings("ignore", message="Setting boft_n_butterfly_factor to 1")
        yield


def _cpu_allocator(choice: str) -> str:
    """The heap allocator CPU trials would get here (``resources.cpu_allocator``), named as the heap models are:
    ``system``, ``jemalloc`` or ``jemalloc (MALLOC_CONF)``."""

    try:
        return allocator_name(worker_env(choice, 0))
    except ValueError:  # jemalloc insisted on and missing: the search refuses that config; the plan warns
        return "system"


def _checked_labels(cfg) -> int:
    """The preflight of ``plan`` (``run`` makes the same checks in ``prepare``): the data loads, its columns exist,
    each class has rows for ``train_per_class`` and enough are left for ``eval_size``; the number of classes."""
    try:
        splits = split_dataset(cfg.dataset, cfg.model.task)
    except (DatasetError, OSError) as err:
        raise ConfigError(str(err)) from None
    return len(splits.label_names)


def format_plan(rows: list[dict[str, Any]]) -> str:
    """Fixed-width table of a plan."""

    def show(name: str, value) -> str:
        return get_metric(name).format(value)

    header = f"{'candidate':<22}{'method':<14}{'quant':<6}{'trainable':>11}{'total':>9}{'adapter':>10}{'est. peak':>11}  notes"
    lines = [header, "-" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(
                f"{r['candidate'][:21]:<22}{r['method'][:13]:<14}{r['quantization']:<6}{'infeasible':>41}  {r['error'][:80]}"
            )
            continue
        notes = ("over " + ", ".join(r["over_budget"])) if r["over_budget"] else ""
        if r.get("step_estimate") == "formula":  # the model's forward pass would not run on meta tensors
            notes = "; ".join(filter(None, [notes, "step by formula, not traced"]))
        lines.append(
            f"{r['candidate'][:21]:<22}{r['method'][:13]:<14}{r['quantization']:<6}{r['trainable_params']:>11,}"
            f"{show('total_params', r['total_params']):>9}{show('adapter_bytes', r['adapter_bytes']):>10}"
            f"{show('est_peak_memory_bytes', r['est_peak_memory_bytes']):>11}  {notes}"
        )
    kinds = {r.get("memory_kind") for r in rows} - {None}
    if kinds == {"cpu_rss"}:
        lines.append(
            "est. peak: resident memory of a CPU worker, its runtime baseline measured on this machine"
        )
        heap = next((r.get("heap_model") for r in rows if r.get("heap_model")), None)
        if heap is not None:
            lines.append(f"est. peak includes what the heap allocator keeps, measured here: {heap}")
        elif any(r.get("memory_kind") == "cpu_rss" for r in rows):
            allocator = next(r.get("cpu_allocator") for r in rows if r.get("memory_kind") == "cpu_rss")
            lines.append(
                f"note: what the heap allocator ({allocator}) keeps of freed memory is not in these estimates yet: "
                "the first `peft-search run` of this model and batch measures it (seconds), and plan reads it after"
            )
    elif kinds:
        lines.append("est. peak: GPU allocator peak over the trial")
    return "\n".join(lines)


RESOLVE_WARN = 0.03
"""``plan`` warns when the held-out split cannot tell apart two trials this far apart in accuracy."""


def resolution_note(eval_size: int, accuracy: float = 0.85) -> str:
    """What ``dataset.eval_size`` held-out rows can tell apart: the smallest resolvable accuracy difference (95 %),
    with a warning and the rows needed when it is over ``RESOLVE_WARN``."""

    gap = resolvable_difference(eval_size, accuracy)
    note = (
        f"held-out rows: {eval_size} (dataset.eval_size); two trials near {accuracy:.0%} accuracy are told apart "
        f"only when they differ by {gap * 100:.1f} points or more (95 %)"
    )
    if gap > RESOLVE_WARN:
        need = next(
            n for n in range(eval_size, 10**7, 50) if resolvable_difference(n, accuracy) <= RESOLVE_WARN
        )
        note += (
            f"\nwarning: differences under {gap * 100:.1f} points are noise here; about {need} held-out rows "
            f"resolve {RESOLVE_WARN * 100:.0f} points (raise dataset.eval_size if the dataset has them)"
        )
    return note
