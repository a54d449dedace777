"""OFT: orthogonal fine-tuning with block-diagonal rotations (Qiu et al. 2023)."""

from peft_search.spaces.common import base, suggest_layers, suggest_targets
from peft_search.spaces.registry import register


@register(
    "oft",
    peft_type="OFT",
    quantization=("none",),
    quantization_why="PEFT has no bitsandbytes variant of the OFT layer",
    description="Block-diagonal orthogonal rotations",
)
def sample_oft(trial, ctx):
    _, targets = suggest_targets(trial, ctx, "oft")
    return {
        **base(ctx, "OFT"),
        "r": 0,
        "oft_block_size": int(trial.suggest_categorical("oft.block_size", [4, 8, 16])),
        "coft": trial.suggest_categorical("oft.coft", [False, True]),
        "target_modules": targets,
        **suggest_layers(trial, ctx, "oft"),
    }
