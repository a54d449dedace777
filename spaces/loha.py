"""LoHa: low-rank Hadamard product adapters from LyCORIS (Hyeon-Woo et al. 2022)."""

from peft_search.spaces.common import (
    base,
    suggest_alpha,
    suggest_dropout,
    suggest_layers,
    suggest_rank,
    suggest_targets,
)
from peft_search.spaces.registry import register


@register(
    "loha",
    peft_type="LOHA",
    quantization=("none", "int8"),
    quantization_why="LyCORIS layers read the base weight's shape, which 4-bit packing changes",
    description="Hadamard product of low-rank pairs",
)
def sample_loha(trial, ctx):
    r = suggest_rank(trial, ctx, "loha")
    _, targets = suggest_targets(trial, ctx, "loha")
    return {
        **base(ctx, "LOHA"),
        "r": r,
        "alpha": suggest_alpha(trial, ctx, "loha", r),
        "rank_dropout": suggest_dropout(trial, ctx, "loha"),
        "target_modules": targets,
        **suggest_layers(trial, ctx, "loha"),
    }
