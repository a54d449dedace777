"""A deep model's training step traced on a few of its blocks: the step's peak grows by the same bytes per block.

A transformer's blocks are identical, so what one training step keeps for the backward pass grows by a fixed
amount per block (more in a block that carries an adapter than in one that does not), while the rest of the peak
(embeddings, the head, the loss, the transient tensors of one block) does not grow at all. Tracing the step on
copies of the model with 2 and 3 blocks (and, when some blocks carry no adapter, 3 blocks of which one is bare)
gives those amounts, and the peak of each phase (forward, backward) at the whole depth follows from them: about a
tenth of the work of tracing every block of a 28-block model, with the same figure (``tests/search/test_planning.py``
holds them to 1 % of the full trace; on the 18 configs of ``benchmarks.plan``'s Llama-3.2-3B plan they are equal).
Gradient checkpointing with the adapter on only some blocks is traced whole: its backward peak sits at the block
with the largest recomputation, wherever that is.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

MIN_BLOCKS = 8
"""Models with fewer blocks than this are traced whole (it costs little there)."""

Trace = Callable[[nn.Module, dict[str, Any]], Sequence[int]]
"""``trace(base, peft_config)``: the step's peak bytes in each of its phases (forward, backward) for that base
model with that adapter."""


@dataclass(frozen=True)
class Counts:
    """PEFT's own parameter counts of a model with the adapter, and the tensors its adapter file would hold."""

    trainable: int
    total: int
    state: dict[str, Any]
    """``get_peft_model_state_dict``: name -> tensor (meta tensors: shapes and dtypes are what count)."""


Count = Callable[[nn.Module, dict[str, Any]], Counts]
"""``count(base, peft_config)``: inject the adapter into ``base`` (which it may keep) and count."""


def num_blocks(base: nn.Module) -> int | None:
    """The model's number of identical blocks, when its config says it in the usual way."""
    value = getattr(base.config, "num_hidden_layers", None)
    return int(value) if isinstance(value, int) else None


def shortened(base: nn.Module, blocks: int) -> nn.Module:
    """The same architecture with ``blocks`` blocks, on the meta device (from its config: no weights)."""
    import torch

    config = copy.deepcopy(base.config)
    config.num_hidden_layers = blocks
    for name in ("layer_types", "mlp_only_layers"):  # per-block lists some configs carry
        value = getattr(config, name, None)
        if isinstance(value, list) and len(value) >= blocks:
            setattr(config, name, value[:blocks])
    with torch.device("meta"):
        return type(base)(config).to(base.dtype)  # the dtype the config asked of the whole model


def adapted_blocks(peft_config: dict[str, Any], blocks: int) -> list[int]:
    """The blocks that carry the adapter (``layers_to_transform``; every block when unset)."""
    layers = peft_config.get("layers_to_transform")
    if layers is None:
        return list(range(blocks))
    return sorted({layers} if isinstance(layers, int) else set(layers))


def step_by_depth(
    base: nn.Module, peft_config: dict[str, Any], trace: Trace, *, gradient_checkpointing: bool = False
) -> int:
    """The step's peak for ``base`` with ``peft_config``: traced whole for a shallow model, else from 2- and
    3-block copies (see the module docstring). A 1-block copy is not enough: there the head's transients can
    decide the peak, as they never do deeper (measured: 3-4 % off on a 10-block BERT)."""
    blocks = num_blocks(base)
    adapted = adapted_blocks(peft_config, blocks or 0)
    # With gradient checkpointing the backward pass peaks while recomputing the block whose recomputation is
    # largest, wherever it sits, not at the top: only a model whose every block is adapted stays linear.
    partial = len(adapted) < (blocks or 0)
    if blocks is None or blocks < MIN_BLOCKS or (gradient_checkpointing and partial):
        return max(trace(base, peft_config))
    every = {k: v for k, v in peft_config.items() if k not in ("layers_to_transform", "layers_pattern")}
    pattern = {"layers_pattern": peft_config["layers_pattern"]} if "layers_pattern" in peft_config else {}

    def peaks(copy: nn.Module, layers: list[int] | None = None) -> np.ndarray:
        where = every if layers is None else {**every, **pattern, "layers_to_transform": layers}
        return np.array(trace(copy, where), dtype=np.int64)

    two, three = shortened(base, 2), shortened(base, 3)
    p2 = peaks(two)
    # Each phase's peak grows by its own amount per block; the step's peak is the larger phase at full depth.
    total = p2 + (len(adapted) - 2) * (peaks(three) - p2)
    # A bare block costs what it adds where it sits the same way in a 3-block copy: under the adapted blocks
    # (nothing below it needs a gradient), between two of them (the gradient passes through), or over them (it
    # also feeds the head).
    below = adapted[0] if adapted else 0
    over = blocks - 1 - adapted[-1] if adapted else 0
    between = blocks - len(adapted) - below - over
    for count, layers in ((below, [1, 2]), (between, [0, 2]), (over, [0, 1])):
        if count:
            total += count * (peaks(three, layers) - p2)
    return int(total.max())


def counts_by_depth(base: nn.Module, peft_config: dict[str, Any], count: Count) -> Counts:
    """PEFT's counts for ``base`` with ``peft_config``: from an injected copy of the whole model when it is shallow,
    else from 2- and 3-block copies, exactly.

    Each adapted block adds the same parameters and the same tensors to the adapter file, under its own index; the
    rest (a classifier head, VB-LoRA's vector bank) does not depend on depth. Both are checked on the copies
    (the 2- and 3-block files must differ by exactly one block's tensors, a bare block must add nothing), and
    anything that does not hold this way is counted on the whole model.
    """
    blocks = num_blocks(base)
    path = _blocks_path(base, blocks)
    if blocks is None or blocks < MIN_BLOCKS or path is None:
        return count(copy.deepcopy(base), peft_config)
    every = {k: v for k, v in peft_config.items() if k not in ("layers_to_transform", "layers_pattern")}
    two, three = shortened(base, 2), shortened(base, 3)
    base2, base3 = _params(two), _params(three)
    c2, c3 = count(two, every), count(shortened(base, 3), every)
    adapted = adapted_blocks(peft_config, blocks)
    state = _expanded(c2.state, c3.state, path, adapted)
    if len(adapted) < blocks:  # a bare block must add nothing
        pattern = {"layers_pattern": peft_config["layers_pattern"]} if "layers_pattern" in peft_config else {}
        bare = count(three, {**every, **pattern, "layers_to_transform": [0, 1]})
        if (bare.trainable, bare.total - base3, len(bare.state)) != (
            c2.trainable,
            c2.total - base2,
            len(c2.state),
        ):
            state = None
    if state is None:
        return count(copy.deepcopy(base), peft_config)
    n = len(adapted)
    added = (c2.total - base2) + (n - 2) * ((c3.total - base3) - (c2.total - base2))
    return Counts(c2.trainable + (n - 2) * (c3.trainable - c2.trainable), _params(base) + added, state)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _blocks_path(base: nn.Module, blocks: int | None) -> str | None:
    """The module path of the model's list of blocks (``model.layers``, ``bert.encoder.layer``)."""
    for name, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == blocks and name:
            return name
    return None


def _expanded(
    two: dict[str, Any], three: dict[str, Any], path: str, adapted: list[int]
) -> dict[str, Any] | None:
    """The whole model's adapter tensors: block 0's under every adapted index, and the rest as they are; None
    when the copies do not show that structure."""

    def split(state: dict[str, Any], n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        rest = dict(state)
        per_block = []
        for i in range(n):
            mark = f"{path}.{i}."
            block = {k.replace(mark, f"{path}.#.", 1): rest.pop(k) for k in list(rest) if mark in k}
            per_block.append(block)
        return rest, per_block

    def shapes(state: dict[str, Any]) -> dict[str, tuple]:
        return {k: (tuple(v.shape), v.dtype) for k, v in state.items()}

    rest2, blocks2 = split(two, 2)
    rest3, blocks3 = split(three, 3)
    template = shapes(blocks3[0])
    if shapes(rest2) != shapes(rest3) or any(shapes(b) != template for b in [*blocks2, *blocks3]):
        return None
    out = dict(rest3)
    for i in adapted:
        out.update({k.replace(f"{path}.#.", f"{path}.{i}.", 1): v for k, v in blocks3[0].items()})
    return out
