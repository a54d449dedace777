"""VB-LoRA: low-rank factors composed from a shared vector bank (Li et al. 2024)."""

from peft_search.spaces.common import base, suggest_dropout, suggest_layers, suggest_rank, suggest_targets
from peft_search.spaces.registry import register


@register(
    "vblora",
    peft_type="VBLORA",
    quantization=("none",),
    quantization_why="PEFT has no bitsandbytes variant of the VB-LoRA layer",
    description="Rank factors drawn from a vector bank",
)
def sample_vblora(trial, ctx):
    _, targets = suggest_targets(trial, ctx, "vblora")
    return {
        **base(ctx, "VBLORA"),
        "r": suggest_rank(trial, ctx, "vblora"),
        "num_vectors": int(trial.suggest_categorical("vblora.num_vectors", [64, 256])),
        "vector_length": 8,
        "topk": 2,
        "vblora_dropout": suggest_dropout(trial, ctx, "vblora"),
        "target_modules": targets,
        **suggest_layers(trial, ctx, "vblora"),
    }
