"""Packed groups (``search.packing``) before training: which adapters can train in one (the LoRA family, through
PEFT's mixed-adapter batches, on a base model it leaves as it is), and what a group's peak memory is planned at."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from peft_search.search.plan.planning import Plan
from peft_search.search.results.metrics import get_metric

SHARED_INIT = (True, False, "gaussian")
"""LoRA initialisations that leave the base weights as they are (PiSSA, OLoRA, LoftQ, EVA and CorDA change them,
so such an adapter cannot share its base model)."""
PACKING_PAYS = 1.15
"""``search.packing: auto`` packs where the measured ``packing_speedup`` is at least this (timing noise and the
routing's own cost kept out: 2 CPU cores measure 0.6-0.9, an under-filled GPU should measure 2 or more)."""

PACKING_GROWS = 1.1
"""``search.packing: auto`` doubles its group size while a row of the larger group trains at least this much faster
again than one of the smaller (an under-filled device fills; a full one gains nothing more, and a larger group only
puts more trials in flight at once)."""
AUTO_DOUBLINGS = 2
"""``search.packing: auto`` measures groups of ``AUTO_PACK`` members, then twice and four times as many at most."""


def packing_size(speedups: dict[int, float]) -> int:
    """The group size ``search.packing: auto`` packs at, from what it measured (``measure_packing``: group size ->
    how many times as fast a row trains packed): the smallest size measured where it reaches ``PACKING_PAYS``, then
    each larger one while its figure grows by ``PACKING_GROWS`` over the last chosen; 1 (each trial alone) when the
    smallest does not pay."""
    chosen, best = 1, 0.0
    for size, speedup in sorted(speedups.items()):
        if speedup < (PACKING_PAYS if chosen == 1 else best * PACKING_GROWS):
            break
        chosen, best = size, speedup
    return chosen


def packing_refusal(peft_config: dict[str, Any]) -> str | None:
    """Why this adapter cannot train in a packed group (None when it can): the LoRA family, through PEFT's
    mixed-adapter batches, on a base model it leaves as it is."""
    if str(peft_config.get("peft_type", "")).upper() != "LORA":
        return f"{peft_config.get('peft_type')} has no mixed-adapter batches in PEFT (the LoRA family has)"
    if peft_config.get("use_dora"):
        return "DoRA: PEFT refuses mixed-adapter batches with DoRA"
    if peft_config.get("init_lora_weights", True) not in SHARED_INIT:
        return f"init_lora_weights={peft_config['init_lora_weights']!r} changes the base weights"
    for key in ("layer_replication", "alora_invocation_tokens", "megatron_config"):
        if peft_config.get(key):
            return f"{key} is set"
    return None


def group_peak_bytes(plans: Sequence[Plan]) -> int:
    """The estimated peak of a packed group (``search.worker.packed.group``) from its members' own plans: the base
    model's weights and the process's runtime once; each member's adapter state; and the packed step, whose batch is
    the members' micro-batches one after another, each through its own adapter only, so its activations and
    gradients are the sum of the members' traced steps (rows add linearly). What the heap allocator keeps
    (``search.plan.heap``) follows: its share of each member's step, and what the one load keeps. Or, where it is
    larger, scoring: the members' adapters, each scored in turn (``Plan.est_peak_memory_bytes``' two phases)."""
    if not plans:
        raise ValueError("a group has at least one member")
    loaded = max(p.weight_bytes for p in plans) + max(p.runtime_bytes for p in plans)
    training = (
        loaded
        + max(p.heap_load_bytes for p in plans)
        + sum(p.adapter_state_bytes + p.activation_bytes + p.heap_step_bytes for p in plans)
    )
    scoring = loaded + sum(p.adapter_bytes for p in plans) + max(p.eval_bytes for p in plans)
    return max(training, scoring)


def packing_note(
    rows: list[dict[str, Any]], members: int, max_memory: int | None, measured: bool = False
) -> str | None:
    """With ``search.packing``: which candidates can pack, and the planned peak of the heaviest group (the
    ``members`` largest packable plans of one quantization level; ``group_peak_bytes``), against
    ``budget.max_memory``; with ``measured`` (``auto``), that groups pack only where they measure a gain. None when
    off."""
    if members <= 1:
        return None
    planned = [r for r in rows if "error" not in r]
    packable = [r for r in planned if packing_refusal(r["peft_config"]) is None]
    note = f"packing (search.packing, up to {members} a group): {len(packable)} of {len(planned)} candidates can pack"
    if not packable:
        return note + "; every trial trains alone"
    groups = []  # per quantization level (a group shares one base model): its heaviest members
    for level in sorted({r["quantization"] for r in packable}):
        same = [r for r in packable if r["quantization"] == level]
        heaviest = sorted(same, key=lambda r: r["est_peak_memory_bytes"], reverse=True)[:members]
        groups.append((group_peak_bytes([_plan_of(r) for r in heaviest]), level, len(heaviest)))
    group, level, size = max(groups)
    show = get_metric("est_peak_memory_bytes").format
    note += f"; est. peak of the heaviest group ({size} x {level}): {show(group)}"
    if max_memory and group > max_memory:
        note += f" (over budget.max_memory {show(max_memory)}: groups stop growing before it)"
    if measured:
        note += (
            f"; auto: the search first times a packed step against its members' steps alone on a worker and packs"
            f" only where a row trains at least {PACKING_PAYS:g}x as fast (else every trial trains alone), in groups"
            f" of up to {members * 2**AUTO_DOUBLINGS} where larger ones measure {PACKING_GROWS:g}x faster again"
        )
    return note


def _plan_of(row: dict[str, Any]) -> Plan:
    b = row["est_breakdown"]
    return Plan(
        trainable_params=row["trainable_params"],
        total_params=row["total_params"],
        adapter_bytes=row["adapter_bytes"],
        weight_bytes=b["weights"],
        adapter_state_bytes=b["adapter_grads_optimizer"],
        activation_bytes=b["training_step"],
        runtime_bytes=b["runtime"],
        heap_step_bytes=b.get("heap_step", 0),
        heap_load_bytes=b.get("heap_load", 0),
        eval_bytes=b.get("evaluation", 0),
    )


__all__ = [
    "AUTO_DOUBLINGS",
    "PACKING_GROWS",
    "PACKING_PAYS",
    "SHARED_INIT",
    "group_peak_bytes",
    "packing_note",
    "packing_refusal",
    "packing_size",
]
