"""LoKr: low-rank Kronecker product adapters from LyCORIS (Edalati et al. 2022)."""

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
    "lokr",
    peft_type="LOKR",
    quantization=("none", "int8"),
    quantization_why="LyCORIS layers read the base weight's shape, which 4-bit packing changes",
    description="Kronecker product of low-rank factors",
)
def sample_lokr(trial, ctx):
    r = suggest_rank(trial, ctx, "lokr")
    _, targets = suggest_targets(trial, ctx, "lokr")
    return {
        **base(ctx, "LOKR"),
        "r": r,
        "alpha": suggest_alpha(trial, ctx, "lokr", r),
        "rank_dropout": suggest_dropout(trial, ctx, "lokr"),
        "target_modules": targets,
        **suggest_layers(trial, ctx, "lokr"),
        "decompose_both": trial.suggest_categorical("lokr.decompose_both", [False, True]),
    }
