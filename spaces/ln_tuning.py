"""LN tuning: train only the normalisation layers (Zhao et al. 2023)."""

from peft_search.spaces.common import base
from peft_search.spaces.registry import register


@register(
    "ln_tuning", peft_type="LN_TUNING", description="Trainable copies of the LayerNorm / RMSNorm layers"
)
def sample_ln_tuning(trial, ctx):
    return {**base(ctx, "LN_TUNING"), "target_modules": list(ctx.norm_targets)}
