"""BOFT: orthogonal fine-tuning with butterfly-factorised rotations (Liu et al. 2024)."""

from peft_search.spaces.common import base, suggest_dropout, suggest_layers, suggest_targets
from peft_search.spaces.registry import register


@register(
    "boft",
    peft_type="BOFT",
    quantization=("none",),
    quantization_why="PEFT has no bitsandbytes variant of the BOFT layer",
    description="Butterfly orthogonal rotations",
)
def sample_boft(trial, ctx):
    _, targets = suggest_targets(trial, ctx, "boft")
    return {
        **base(ctx, "BOFT"),
        "boft_block_size": int(trial.suggest_categorical("boft.block_size", [4, 8])),
        "boft_block_num": 0,
        "boft_n_butterfly_factor": int(trial.suggest_categorical("boft.n_butterfly_factor", [1, 2])),
        "boft_dropout": suggest_dropout(trial, ctx, "boft"),
        "target_modules": targets,
        **suggest_layers(trial, ctx, "boft"),
    }
